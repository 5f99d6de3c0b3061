"""Pure numpy: normalisation, tiling, post-processing, measurement, training targets and metrics. No I/O."""
