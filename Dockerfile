# servicerouter beside HAProxy in one container: the daemon starts and supervises
# HAProxy (master-worker) and reloads it only when the shape changes.
#   docker build -t servicerouter .
#   docker run --net=host -e SERVICEROUTER_MARATHON=http://marathon-1:8080,http://marathon-2:8080 servicerouter
# Every flag of `servicerouter run --help` is also SERVICEROUTER_<FLAG>; flags given
# after the image name are appended to the entry point and win over the variables.
FROM debian:bookworm-slim

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      haproxy python3 python3-venv ca-certificates make libcap2-bin \
 && rm -rf /var/lib/apt/lists/*

# The same command as on a host: make install-venv (see the Makefile).
WORKDIR /src
COPY Makefile pyproject.toml README.md ./
COPY src ./src
COPY templates ./templates
RUN make install-venv PREFIX=/opt/servicerouter \
 && rm -rf /src

# A dedicated user. HAProxy may bind ports below 1024 (80, 443, service ports)
# through a file capability; run the container without --cap-drop=NET_BIND_SERVICE.
RUN useradd --system --home-dir /var/lib/servicerouter --create-home \
      --shell /usr/sbin/nologin servicerouter \
 && install -d -o servicerouter -g servicerouter -m 0750 /run/servicerouter \
 && setcap cap_net_bind_service=+ep /usr/sbin/haproxy

ENV PATH=/opt/servicerouter/bin:$PATH \
    SERVICEROUTER_HAPROXY_CONFIG=/var/lib/servicerouter/haproxy.cfg \
    SERVICEROUTER_HAPROXY_SOCKET=/run/servicerouter/admin.sock \
    SERVICEROUTER_HAPROXY_MASTER_SOCKET=/run/servicerouter/master.sock \
    SERVICEROUTER_LISTEN=127.0.0.1:9091
# Metrics and health stay on loopback unless the operator says otherwise, e.g.
#   -e SERVICEROUTER_LISTEN=0.0.0.0:9091 -e SERVICEROUTER_STATS_ADDRESS=0.0.0.0
EXPOSE 80 443 9090 9091
USER servicerouter
WORKDIR /var/lib/servicerouter

# /livez (liveness: HAProxy serves) on whatever SERVICEROUTER_LISTEN says (a wildcard
# address is asked on loopback); 200 is healthy, anything else (503, no answer) is not.
# Not /healthz: that is 503 too once Marathon has been unreachable for a while, and an
# orchestrator restarting the container then would only take the last good config away.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import os, sys, urllib.request as r; h, _, p = os.environ.get('SERVICEROUTER_LISTEN', '127.0.0.1:9091').rpartition(':'); h = h.strip('[]'); h = '127.0.0.1' if h in ('', '0.0.0.0', '::') else h; h = f'[{h}]' if ':' in h else h; sys.exit(0 if r.urlopen(f'http://{h}:{p}/livez', timeout=4).status == 200 else 1)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["servicerouter", "run", "--start-haproxy"]
