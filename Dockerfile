# hpo in a container: `hpo` is the entry point, PostgreSQL and MySQL drivers included.
#
#   docker build -t hpo .                             # CPU: Keras on TensorFlow
#   docker build -t hpo:gpu --build-arg GPU=cuda12 .  # + jax[cuda12], KERAS_BACKEND=jax
#   docker run --rm hpo optimize imdb --storage postgresql+psycopg://… --study s --trials 100
#
# See docs/scale-out.md (compose.yaml, deploy/k8s).
ARG PYTHON_VERSION=3.12
FROM python:${PYTHON_VERSION}-slim

# Empty: the CPU image. cuda12 (or cuda13): also jax[cuda12], and Keras trains on JAX.
ARG GPU=
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/hpo
COPY pyproject.toml README.md ./
COPY hpo ./hpo
COPY studies ./studies
RUN pip install ".[postgres,mysql]" \
    && if [ -n "$GPU" ]; then pip install "jax[$GPU]"; fi \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin hpo \
    && mkdir /artifacts && chown hpo /artifacts
# /artifacts: where compose mounts the artifact store all workers share (HPO_ARTIFACTS), owned
# by hpo so that a fresh named volume, which copies it, is writable.

# The built-in study files (hpo studies, hpo optimize imdb) live beside the package's source.
ENV HPO_STUDIES_DIR=/opt/hpo/studies
# The GPU image trains on JAX; in the CPU image this is empty, which Keras reads as unset.
ENV KERAS_BACKEND=${GPU:+jax}

USER hpo
WORKDIR /home/hpo
# Ctrl-C semantics on `docker stop`: hpo stops after the current epoch, saving the trial's
# state, instead of being killed (a running trial would then wait for its heartbeat to go
# stale before another worker re-runs it).
STOPSIGNAL SIGINT
ENTRYPOINT ["hpo"]
CMD ["--help"]
