# The two commands a new user needs: `make run` (or `cargo run --release`) and `make test`.
# `make test` installs what the suite needs (a Python venv with the SDK and its test tools)
# and runs everything CI runs.

.PHONY: run test check rust-test python-test compat-test

run:
	cargo run --release

test:
	scripts/test.sh

check:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
