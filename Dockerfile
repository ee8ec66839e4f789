# synwatch container image: `docker build -t synwatch .` at the top of the repository.
#
# Run (the image's config scans the container's own loopback only; mount your own over it):
#   docker run --rm --cap-drop ALL --cap-add NET_RAW -p 10045:10045 synwatch
#   docker run --rm --cap-drop ALL --cap-add NET_RAW -p 10045:10045 \
#       -v "$PWD/synwatch.yaml:/etc/synwatch/synwatch.yaml:ro" synwatch
# It runs as the non-root user 10045. The binary carries the file capability cap_net_raw, the
# only privilege it needs, and only while it opens its raw sockets (it then drops every
# capability). Without NET_RAW in the container's bounding set it scans with connect().

FROM rust:1-bookworm AS build
# The source revision for synwatch_build_info (.git is not sent to the builder):
#   docker build --build-arg SYNWATCH_REVISION=$(git rev-parse --short=12 HEAD) -t synwatch .
ARG SYNWATCH_REVISION=unknown
WORKDIR /src
COPY . .
RUN SYNWATCH_REVISION="$SYNWATCH_REVISION" cargo build --profile dist --locked -p synwatch \
    && install -D -m 0755 target/dist/synwatch /out/synwatch

FROM debian:bookworm-slim
COPY --from=build /out/synwatch /usr/bin/synwatch
COPY configs/synwatch.yaml /etc/synwatch/synwatch.yaml
# libcap2-bin only to set the file capability (after the COPY: COPY keeps no extended
# attributes); it is removed in the same layer.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libcap2-bin \
    && setcap cap_net_raw=ep /usr/bin/synwatch \
    && groupadd --system --gid 10045 synwatch \
    && useradd --system --uid 10045 --gid 10045 --home-dir /var/lib/synwatch --no-create-home \
        --shell /usr/sbin/nologin synwatch \
    && install -d -o 10045 -g 10045 -m 0750 /var/lib/synwatch \
    && apt-get purge -y --auto-remove libcap2-bin \
    && rm -rf /var/lib/apt/lists/*
USER 10045:10045
EXPOSE 10045
VOLUME ["/var/lib/synwatch"]
ENTRYPOINT ["/usr/bin/synwatch"]
CMD ["serve", "--config", "/etc/synwatch/synwatch.yaml", "--listen", "0.0.0.0:10045", "--state-dir", "/var/lib/synwatch"]
