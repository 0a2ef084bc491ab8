# The hogx exchange as an image: `docker compose up` builds it (see docker-compose.yml and the README).
# Build stage: a full Python image (it has the C compiler) installs the project into a virtual
# environment, which compiles the core with mypyc (setup.py); the build fails if the core came out
# uncompiled. Runtime stage: the slim image, that environment, a non-root user, /readyz as health check.
FROM python:3.11-bookworm AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY exchange exchange
COPY gateway gateway
RUN python -m venv /opt/hogx \
    && /opt/hogx/bin/pip install --no-cache-dir --upgrade pip \
    && HOGX_COMPILE=1 /opt/hogx/bin/pip install --no-cache-dir . \
    && /opt/hogx/bin/python -c "import exchange.core as c, sys; sys.exit(c.__file__.endswith('.py'))"

FROM python:3.11-slim-bookworm
COPY --from=build /opt/hogx /opt/hogx
RUN useradd --system --uid 10001 --home-dir /home/hogx --create-home hogx
USER hogx
WORKDIR /home/hogx
ENV PATH=/opt/hogx/bin:$PATH PYTHONUNBUFFERED=1 HOGX_HOST=0.0.0.0 HOGX_PORT=8080
EXPOSE 8080
# Ready once recovery (snapshot + journal tail) is done; not ready while the database is unreachable.
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2)"]
CMD ["hogx", "serve", "--host", "0.0.0.0", "--port", "8080"]
