pub mod ublk;
