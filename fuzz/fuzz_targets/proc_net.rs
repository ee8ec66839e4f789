//! Fuzzes the reading of `/proc/net/{tcp,tcp6,udp,udp6}` as the listeners collector does it
//! (procfs's table parsers): a table or an error, never a panic. The kernel writes these
//! files, but a collector must survive a format it does not know.

#![no_main]

use libfuzzer_sys::fuzz_target;
use procfs_core::net::{TcpNetEntries, UdpNetEntries};
use procfs_core::{ExplicitSystemInfo, FromBufReadSI};

fuzz_target!(|data: &[u8]| {
    for is_little_endian in [true, false] {
        let system = ExplicitSystemInfo { boot_time_secs: 0, ticks_per_second: 100, page_size: 4096, is_little_endian };
        let _ = TcpNetEntries::from_buf_read(data, &system);
        let _ = UdpNetEntries::from_buf_read(data, &system);
    }
});
