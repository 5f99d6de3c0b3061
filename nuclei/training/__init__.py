"""Training (the only part of nuclei that imports TensorFlow/Keras): model, fit, export, int8, the train steps."""
