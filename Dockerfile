# The healthscope image: a static-enough release build on a minimal, non-root base.
#   docker build -t healthscope:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin healthscope

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/healthscope /usr/local/bin/healthscope
# The chart runs it as this user with a read-only root filesystem.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/healthscope"]
CMD ["run"]
