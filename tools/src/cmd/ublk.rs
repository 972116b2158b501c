//! The ublk side of add, del, list and recover.
