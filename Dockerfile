# nuclei images. The default target is the inference/worker image for GPU machines (no TensorFlow);
# the `train` target adds TensorFlow for training.
#   docker build -t nuclei:worker .
#   docker build --target train -t nuclei:train .
#   docker run --rm --gpus all -v /srv/microscope:/data nuclei:worker nuclei segment /data/incoming --store /data/out.zarr
# onnxruntime-gpu 1.31 needs CUDA 13 and cuDNN 9 at run time. Prefect's docker worker runs flows from /app
# (deployments/prefect-docker.yaml), so there is no ENTRYPOINT: the command is the worker's.
# tests/test_dockerfile.py runs the RUN pip steps below in the test environment (no Docker engine there).
# The default model and the sample images are package data: `pip install .` brings them (no COPY needed).
FROM nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04 AS worker
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PREFECT_SERVER_ANALYTICS_ENABLED=false \
    VIRTUAL_ENV=/opt/nuclei PATH=/opt/nuclei/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 nuclei
WORKDIR /app
COPY pyproject.toml README.md ./
COPY nuclei ./nuclei
COPY flows ./flows
COPY deployments ./deployments
RUN python3 -m venv $VIRTUAL_ENV
RUN pip install --no-cache-dir .
USER nuclei
CMD ["nuclei", "--help"]

FROM worker AS train
USER root
RUN pip install --no-cache-dir ".[train]"
USER nuclei
