//! This package is only its tests (`tests/tests/`): whole-system tests on real processes,
//! Docker, an S3 server and pipelines compiled by kfp. Their harness is `gantry-testkit`.
