# Steward: one `steward serve` process. Configuration: STEWARD_* variables, every one of them
# (docs/operations.md); the image sets where it keeps its files and where it listens.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STEWARD_MODELS_DIR=/var/lib/steward/models \
    STEWARD_DATA_DIR=/var/lib/steward/data \
    STEWARD_HOST=0.0.0.0 \
    STEWARD_PORT=8000

RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/steward steward
WORKDIR /opt/steward

# Dependencies first, in their own layer: rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['postgres']))" > requirements.txt \
 && pip install -r requirements.txt

COPY README.md ./
COPY app ./app
RUN pip install --no-deps .

USER steward
VOLUME ["/var/lib/steward"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['STEWARD_PORT'] + '/healthz', timeout=2)"]

# The demo models are trained on first start (when the registry volume has none), then exec
# hands PID 1 to `steward serve`, so SIGTERM reaches it and drains the prediction log. Its
# worker count is the setting's: STEWARD_WORKERS (default 1; `docker run -e STEWARD_WORKERS=2`),
# read by `steward serve` itself, so this command does not change. With several workers the
# parent is PID 1 and drains them all on SIGTERM, but reaps only its own workers: run the
# container with an init (`docker run --init`, compose `init: true`) to reap the rest
# (docs/operations.md, "Several workers on one host").
CMD ["sh", "-c", "steward train demo --if-missing && exec steward serve"]
