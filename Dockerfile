# llmux container: build with cargo in a Rust image, run as a non-root user in a slim Debian.
#   docker build -t llmux .
#   docker run -p 8000:8000 -e OPENAI_API_KEY -v "$PWD/configs:/configs:ro" llmux
FROM rust:1-slim-bookworm AS builder
WORKDIR /src
# Dependencies first, against placeholder sources: this layer is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked --bin llmux \
    && rm -rf src target/release/.fingerprint/llmux-* target/release/deps/llmux-* target/release/deps/libllmux-*
COPY src ./src
# The release profile strips the binary (`strip = true` in Cargo.toml).
RUN cargo build --release --locked --bin llmux

FROM debian:bookworm-slim
# TLS roots are compiled in (webpki-roots): no ca-certificates needed.
RUN groupadd --system --gid 10001 llmux \
    && useradd --system --uid 10001 --gid llmux --no-create-home --shell /usr/sbin/nologin llmux
COPY --from=builder /src/target/release/llmux /usr/local/bin/llmux
# Default configs; mount your own dir over /configs.
COPY configs /configs
ENV LLMUX_HOST=0.0.0.0 \
    LLMUX_PORT=8000 \
    LLMUX_CONFIG_DIR=/configs
USER 10001:10001
EXPOSE 8000
# Liveness only: never touches an upstream. The binary checks itself: no HTTP client in the image.
HEALTHCHECK --interval=15s --timeout=5s --start-period=5s --retries=3 CMD ["llmux", "healthcheck"]
# SIGTERM drains (LLMUX_SHUTDOWN_GRACE, 30 s by default); `docker stop -t` must allow more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["llmux"]
CMD ["serve"]
