# syntax=docker/dockerfile:1
# The BabelRAG app: the babelrag package and CLI, `babelrag serve` by default, as a non-root user,
# with a health check on /healthz. The LLM runs elsewhere: compose.yaml's vllm service, or any
# OpenAI-compatible server at BABELRAG_LLM_BASE_URL.
#   docker build -t babelrag .                                                # CPU torch
#   docker build -t babelrag --build-arg TORCH_INDEX_URL=https://pypi.org/simple .  # CUDA torch (PyPI's)
#   docker build -t babelrag --build-arg EXTRAS=ray .                         # with Ray (compose's ray profile)
#   docker run -p 7860:7860 -e BABELRAG_SERVER_TOKEN=... -e BABELRAG_LLM_BASE_URL=http://HOST:8011/v1 babelrag

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a virtual environment with torch and babelrag, copied whole into the app stage ----------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
# The CPU build by default. PyPI's torch is the CUDA build: compose.yaml asks for it, so that the
# embedding model and the reranker run on the GPU.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/babelrag/bin:$PATH
# torch first: otherwise sentence-transformers resolves PyPI's multi-GB CUDA build
RUN python -m venv /opt/babelrag && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY rag ./rag
COPY ingestion ./ingestion
COPY ui ./ui
RUN pip install "/src${EXTRAS:+[$EXTRAS]}"

# -- app: no compilers, no pip cache, no source tree --------------------------------------------
FROM ${PYTHON_IMAGE} AS app
# The app's user owns only what it writes: /data (knowledge bases, keyword indexes, uploads, job
# reports) and its cache (downloaded models, embedding exports).
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin babelrag \
    && mkdir -p /data /home/babelrag/.cache/huggingface \
    && chown -R babelrag:babelrag /data /home/babelrag/.cache
COPY --from=build /opt/babelrag /opt/babelrag
COPY configs /app/configs
ENV PATH=/opt/babelrag/bin:$PATH PYTHONUNBUFFERED=1 GRADIO_ANALYTICS_ENABLED=False \
    BABELRAG_STORE_PATH=/data/chroma BABELRAG_STORE_INDEX_DIR=/data/index BABELRAG_SERVER_UPLOAD_DIR=/data/uploads \
    BABELRAG_INGESTION_REPORT_DIR=/data/reports BABELRAG_SERVER_HOST=0.0.0.0 BABELRAG_SERVER_PORT=7860
WORKDIR /data
USER 10001:10001
VOLUME ["/data"]
EXPOSE 7860
# Liveness: the process serves HTTP. /readyz (store and LLM server answer) is compose's check.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 CMD ["python", "-c", \
    "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['BABELRAG_SERVER_PORT'], timeout=4)"]
ENTRYPOINT ["babelrag"]
CMD ["serve"]
