# servicerouter beside HAProxy in one container: the daemon starts and supervises
# HAProxy (master-worker) and reloads it only when the shape changes.
#   docker build -t servicerouter .
#   docker run --net=host servicerouter --marathon http://marathon:8080
FROM debian:bookworm-slim

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      haproxy python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY templates ./templates
RUN python3 -m venv /opt/servicerouter \
 && /opt/servicerouter/bin/pip install --no-cache-dir . \
 && rm -rf /src

ENV PATH=/opt/servicerouter/bin:$PATH \
    SERVICEROUTER_HAPROXY_CONFIG=/etc/haproxy/haproxy.cfg \
    SERVICEROUTER_HAPROXY_SOCKET=/run/haproxy/admin.sock \
    SERVICEROUTER_HAPROXY_MASTER_SOCKET=/run/haproxy/master.sock \
    SERVICEROUTER_START_HAPROXY=true
# Metrics and health stay on loopback unless the operator says otherwise, e.g.
#   -e SERVICEROUTER_LISTEN=0.0.0.0:9091 -e SERVICEROUTER_STATS_ADDRESS=0.0.0.0
EXPOSE 80 443 9090 9091
STOPSIGNAL SIGTERM
ENTRYPOINT ["servicerouter", "run"]
