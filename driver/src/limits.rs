//! The process's file descriptor limit (`RLIMIT_NOFILE`): raised at start
//! to what the hard limit allows, as Kafka's packaging asks operators to do
//! by hand, and the default bound on the files the disk holds open derived
//! from it, so that sockets, directories and the syncer keep their share.

use std::io;

/// The soft and hard limits on open descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFilesLimit {
    pub soft: u64,
    pub hard: u64,
}

/// What `raise_open_files_limit` found and left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFilesRaise {
    pub soft_before: u64,
    pub limit: OpenFilesLimit,
}

/// Highest soft limit asked for when the hard limit is unlimited (Linux's
/// default `fs.nr_open`); a kernel refusing it keeps the limit it had.
const OPEN_FILES_UNLIMITED_TARGET: u64 = 1 << 20;

/// Share of the descriptor limit the disk may hold for files by default:
/// half, the rest for connections, directories being synced and the
/// runtime.
const OPEN_FILES_SHARE_DIVISOR: u64 = 2;

/// Largest default bound, whatever the limit (an unlimited one included).
const OPEN_FILES_DEFAULT_MAX: u64 = 1 << 19;

pub fn open_files_limit() -> io::Result<OpenFilesLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OpenFilesLimit {
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

fn set_soft_limit(soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads one rlimit from a struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the soft limit on open descriptors to the hard limit (to
/// `OPEN_FILES_UNLIMITED_TARGET` when the hard one is unlimited).
pub fn raise_open_files_limit() -> io::Result<OpenFilesRaise> {
    let before = open_files_limit()?;
    let target = if before.hard == libc::RLIM_INFINITY {
        OPEN_FILES_UNLIMITED_TARGET
    } else {
        before.hard
    };
    if target > before.soft {
        set_soft_limit(target, before.hard)?;
    }
    Ok(OpenFilesRaise {
        soft_before: before.soft,
        limit: open_files_limit()?,
    })
}

/// The default of `log.open.files.max` under a soft limit of `soft`.
pub fn open_files_max_default(soft: u64) -> usize {
    let share = (soft / OPEN_FILES_SHARE_DIVISOR).min(OPEN_FILES_DEFAULT_MAX);
    (share as usize).max(crate::disk::OPEN_FILES_MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_bound_is_half_the_limit_within_its_bounds() {
        assert_eq!(open_files_max_default(256), 128);
        assert_eq!(open_files_max_default(4), crate::disk::OPEN_FILES_MIN);
        assert_eq!(
            open_files_max_default(libc::RLIM_INFINITY),
            OPEN_FILES_DEFAULT_MAX as usize
        );
    }

    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_one_or_above_where_it_was() {
        let raised = raise_open_files_limit().expect("getrlimit and setrlimit");
        assert!(raised.limit.soft >= raised.soft_before);
        assert!(raised.limit.soft <= raised.limit.hard);
    }
}
