//! Which optional kernel features (passthrough, FUSE-over-io_uring, io_uring origin reads)
//! a mount asks for, given its options and what this process and kernel allow.

use musicfs_core::config::{PassthroughSetting, TransportSetting};

use crate::negotiate::Wants;
use crate::ring::ReadRing;
use crate::FuseError;

use super::MountOptions;

/// Whether this process holds `CAP_SYS_ADMIN` (passthrough's backing-open needs it).
fn has_cap_sys_admin() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// Path of the kernel's switch for FUSE-over-io_uring (kernel 6.14+).
pub const URING_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// Whether the kernel currently allows FUSE-over-io_uring.
pub fn uring_param_enabled() -> bool {
    std::fs::read_to_string(URING_PARAM).is_ok_and(|v| v.trim() == "Y")
}

/// Which optional INIT features to ask for, failing early when the options require one
/// this process or kernel cannot have.
pub(super) fn feature_wants(opts: &MountOptions) -> Result<Wants, FuseError> {
    let cap = has_cap_sys_admin();
    let passthrough = match opts.passthrough {
        PassthroughSetting::Off => false,
        PassthroughSetting::Auto => {
            if !cap {
                tracing::info!(
                    "no CAP_SYS_ADMIN: FUSE passthrough off, reads go through the daemon"
                );
            }
            cap
        }
        PassthroughSetting::On if !cap => {
            return Err(FuseError::Unavailable {
                feature: "FUSE passthrough",
                reason: "it needs CAP_SYS_ADMIN".into(),
            })
        }
        PassthroughSetting::On => true,
    };
    if opts.transport != TransportSetting::Dev && opts.enable_uring_param && !uring_param_enabled()
    {
        match std::fs::write(URING_PARAM, "Y") {
            Ok(()) => tracing::info!(param = URING_PARAM, "enabled FUSE-over-io_uring"),
            Err(e) => {
                tracing::warn!(param = URING_PARAM, error = %e, "cannot enable FUSE-over-io_uring")
            }
        }
    }
    let uring = match opts.transport {
        TransportSetting::Dev => false,
        TransportSetting::Auto => {
            let on = uring_param_enabled();
            if !on {
                tracing::info!(
                    param = URING_PARAM,
                    "FUSE-over-io_uring is off in the kernel; using /dev/fuse"
                );
            }
            on
        }
        TransportSetting::Uring if !uring_param_enabled() => {
            return Err(FuseError::Unavailable {
                feature: "FUSE-over-io_uring",
                reason: format!("{URING_PARAM} is not Y (see --enable-uring-param)"),
            })
        }
        TransportSetting::Uring => true,
    };
    Ok(Wants { passthrough, uring })
}

/// Whether this process may create an io_uring (seccomp or `kernel.io_uring_disabled` may
/// forbid it); workers read sources with `pread` otherwise.
pub(super) fn probe_read_ring() -> bool {
    match ReadRing::new() {
        Ok(_) => true,
        Err(e) => {
            tracing::info!(error = %e, "io_uring unavailable; origin reads use pread");
            false
        }
    }
}
