//! Loopback ports for the processes a test starts, reserved so that nothing else takes them.
//!
//! A port taken from the kernel with `bind(0)` and released is fair game for the next outgoing
//! connection of any process, and for the next test; so ports come from outside the kernel's
//! ephemeral range (read from `/proc`, not assumed), and each is claimed with an exclusive lock
//! on a file under the system's temporary directory, held for this process's life, so that
//! concurrent test binaries never pick the same one. A node restarted later gets its port back.

use std::net::TcpListener;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

/// How many ports the tests draw from.
const SPAN: u16 = 12_000;

/// A loopback port reserved for this test process until it exits.
pub fn free_port() -> u16 {
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let ports = test_ports(ephemeral_range());
    let dir = std::env::temp_dir().join("pot-e2e-ports");
    std::fs::create_dir_all(&dir).expect("port lock directory");
    let span = (ports.end - ports.start) as u32;
    let start = (std::process::id().wrapping_mul(7919) ^ now_nanos()) % span;
    for i in 0..span {
        let port = ports.start + ((start + i) % span) as u16;
        let Ok(lock) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{port}.lock")))
        else {
            continue;
        };
        #[allow(unsafe_code)]
        // SAFETY: flock(2) on a file descriptor this function owns; no memory is involved.
        let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if !locked {
            continue;
        }
        // Someone outside the tests may be listening there.
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        HELD.lock().expect("port locks").push(lock);
        return port;
    }
    panic!("no free loopback port in {ports:?}");
}

/// The kernel's ephemeral port range, `[low, high]`; Linux's default where it cannot be read.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(str::parse::<u16>);
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .unwrap_or((32_768, 60_999))
}

/// [`SPAN`] ports just below the ephemeral range `[low, high]` if they fit above the privileged
/// ports, else just above it, else (the range covers nearly everything) the ports above 1024
/// that it leaves, or as a last resort a fixed window.
fn test_ports((low, high): (u16, u16)) -> Range<u16> {
    if low >= 1024 + SPAN {
        low - SPAN..low
    } else if high <= u16::MAX - SPAN {
        high + 1..high + 1 + SPAN
    } else if low > 1024 + 100 {
        1024..low
    } else if high < u16::MAX - 100 {
        high + 1..u16::MAX
    } else {
        20_000..20_000 + SPAN
    }
}

fn now_nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outside(r: &Range<u16>, (low, high): (u16, u16)) -> bool {
        r.end <= low || r.start > high
    }

    #[test]
    fn test_ports_never_overlap_the_ephemeral_range() {
        for range in [
            (32_768, 60_999), // Linux's default
            (49_152, 65_535), // IANA's, as some distributions set it
            (1_024, 60_999),  // nearly everything: only the top is left
            (10_000, 65_535), // a low start: only what is under it
        ] {
            let ports = test_ports(range);
            assert!(outside(&ports, range), "{range:?} -> {ports:?}");
            assert!(ports.start >= 1024 && ports.start < ports.end, "{ports:?}");
        }
        assert_eq!(test_ports((32_768, 60_999)), 20_768..32_768);
    }

    #[test]
    fn a_port_is_handed_out_once_per_process() {
        let (a, b) = (free_port(), free_port());
        assert_ne!(a, b);
        let ports = test_ports(ephemeral_range());
        assert!(ports.contains(&a) && ports.contains(&b));
    }
}
