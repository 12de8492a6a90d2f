#!/usr/bin/env bash
# Kill-and-resume check in release mode: a run against an external mock is
# killed with SIGKILL at random points and resumed each time; see
# crates/abl/tests/kill_resume.rs. ITEMS and ROUNDS scale it.
set -euo pipefail
cd "$(dirname "$0")/.."
ABL_KILL_ITEMS="${ITEMS:-20000}" ABL_KILL_ROUNDS="${ROUNDS:-5}" \
  cargo test --release -p abl --test kill_resume -- --nocapture
