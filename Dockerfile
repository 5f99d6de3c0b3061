# nuclei images. Inference/worker (GPU, no TensorFlow) is the default target; `--target train` adds TensorFlow.
#   docker build -t nuclei:worker .
#   docker build --target train -t nuclei:train .
# onnxruntime-gpu 1.31 needs CUDA 13 and cuDNN 9 at run time.
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
COPY models ./models
RUN python3 -m venv $VIRTUAL_ENV && pip install --no-cache-dir .
USER nuclei
ENTRYPOINT ["nuclei"]
CMD ["--help"]

FROM worker AS train
USER root
RUN pip install --no-cache-dir ".[train]"
USER nuclei
