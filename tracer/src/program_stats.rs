//! What the kernel itself counts about the attached drop program, beyond what the
//! program can count: runs it skipped.
//!
//! The kernel runs a tracing program at most once per CPU at a time. A `kfree_skb` that
//! fires on a CPU while the program is already running there (a drop in an interrupt
//! that arrived during a run) is not traced; the kernel only increments the program's
//! `recursion_misses` (5.12+). Those drops are in no map, so without this counter
//! events = counted + uncounted could look true while drops were missed.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
};

use aya_obj::generated::{bpf_cmd, bpf_prog_info};

/// The `info` member of `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// A descriptor of the attached program, to ask the kernel for its counters.
pub struct ProgramStats {
    program: OwnedFd,
}

impl ProgramStats {
    /// `program` is a descriptor of the attached program (a duplicate is fine).
    #[must_use]
    pub fn new(program: OwnedFd) -> Self {
        Self { program }
    }

    /// The kernel's `bpf_prog_info` of the program.
    fn info(&self) -> io::Result<bpf_prog_info> {
        // SAFETY: bpf_prog_info is plain integers (and a bitfield of integers); all
        // zeroes is a valid value, and the kernel requires the unused tail to be zero.
        let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
        let attr = InfoByFd {
            bpf_fd: self.program.as_raw_fd() as u32,
            info_len: size_of::<bpf_prog_info>() as u32,
            info: (&raw mut info) as u64,
        };
        // SAFETY: bpf(2) reads `attr` (valid for its size) and writes at most `info_len`
        // bytes to `info`, which is ours and that large. Kernels with a shorter struct
        // fill only their part; the rest stays zero.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
                &raw const attr,
                size_of::<InfoByFd>(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(info)
    }

    /// Runs the kernel skipped because the program was already running on that CPU
    /// (0 on kernels before 5.12, which do not count them).
    pub fn recursion_misses(&self) -> io::Result<u64> {
        Ok(self.info()?.recursion_misses)
    }
}
