"""ONNX Runtime inference without TensorFlow: the engine, the Dask worker task, the run driver, the cluster."""
