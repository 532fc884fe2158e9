# stocksync: the API (`stocksync serve`, the default, on port 8000) or a channel worker (`docker run IMAGE
# worker ... --metrics-port 9100`, whose /healthz compose.yaml checks).
# Two stages: the build stage installs the wheel into a venv; the runtime stage copies only that venv.
# The dependencies come first, in a layer of their own, at the versions the tests ran with (constraints.txt):
# a change to the source rebuilds only the layers below them.
FROM python:3.11-slim AS build
WORKDIR /src
COPY constraints.txt ./
RUN python -m venv /opt/stocksync \
 && /opt/stocksync/bin/pip install --no-cache-dir -r constraints.txt
COPY pyproject.toml README.md ./
COPY lua ./lua
COPY stocksync ./stocksync
COPY consumers ./consumers
RUN /opt/stocksync/bin/pip install --no-cache-dir --no-deps . \
 && /opt/stocksync/bin/pip check

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin stocksync
COPY --from=build /opt/stocksync /opt/stocksync
ENV PATH=/opt/stocksync/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001
EXPOSE 8000 9100
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
ENTRYPOINT ["stocksync"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
