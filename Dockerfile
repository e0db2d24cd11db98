# syntax=docker/dockerfile:1
# flowgate: one image for the gateway (`serve`), the reference engine (`engine`) and the one-shot
# agent import (`agents import`). Build: `docker build -t flowgate:local .`

# ---- build ---------------------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src/ src/
# Compiled into the binary: migrations (sqlx::migrate!), the chat page, the sample agents.
COPY migrations/ migrations/
COPY static/ static/
COPY flows/ flows/
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin flowgate \
    && cp target/release/flowgate /usr/local/bin/flowgate

# ---- runtime -------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
# The system's root certificates: outbound TLS (a wss:// engine, an https:// model provider)
# verifies against them.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 flowgate \
    && useradd --system --uid 10001 --gid flowgate --no-create-home --shell /usr/sbin/nologin flowgate
WORKDIR /app
COPY --from=builder /usr/local/bin/flowgate /usr/local/bin/flowgate
COPY flows/ /app/flows/
ENV FLOWGATE_LOG_FORMAT=json
USER 10001:10001
EXPOSE 8000 8001
ENTRYPOINT ["/usr/local/bin/flowgate"]
CMD ["serve"]
