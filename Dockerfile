# mp on GPU servers: CUDA PyTorch, CuPy for sigpy's GPU ESPIRiT, the package and
# its shipped meta-prior. Data in as a read-only volume at /data, outputs at /out.
#   docker build -t mpcli .
#   docker run --gpus all -v "$PWD/scans:/data:ro" -v "$PWD/out:/out" mpcli \
#       adapt --kspace /data/scan.h5 --recon /out
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

LABEL org.opencontainers.image.title="mpcli" \
      org.opencontainers.image.description="Meta-prior adaptive MRI reconstruction (mp)" \
      org.opencontainers.image.licenses="BSD-3-Clause"

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /opt/mpcli
COPY pyproject.toml README.md ./
COPY mpcli ./mpcli
# torch comes from the base image (the range in pyproject admits it); CuPy for
# sigpy on CUDA 12.
RUN pip install --no-cache-dir "cupy-cuda12x==13.3.0" . \
    && python -c "import mpcli.cli, sigpy, cupy"

RUN groupadd --gid 10001 mp \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin mp \
    && mkdir -p /data /out \
    && chown 10001:10001 /out

VOLUME ["/data", "/out"]
WORKDIR /out
USER 10001:10001
ENTRYPOINT ["mp"]
CMD ["--help"]
