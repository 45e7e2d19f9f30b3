//! Tests of `unpack`: inputs built here, hostile cases beside positive controls.
