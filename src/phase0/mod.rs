//! Phase 0: the base image. Verify it, make a sparse raw working copy, read its partition
//! table, attach partitions as loop devices and mount its tree as its own fstab says.

pub mod fstab;
pub mod partition;
pub mod verify;
