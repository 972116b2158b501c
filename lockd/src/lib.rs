//! lockd: cluster locks for scoutfs-ublk nodes. See `docs/protocol.md`.
