//! Generated gRPC types and services of package `gantry.v1`.
#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("gantry.v1");
}
