//! TCP_NODELAY on the plugin connection Terraform opens to this provider.
//!
//! tf-provider serves the plugin protocol on a TCP listener it binds itself and
//! offers no hook to configure. Without TCP_NODELAY, every response that is written
//! in more than one segment waits for the client's delayed ACK: about 40 ms per call.
//! Linux copies TCP_NODELAY from a listening socket to the sockets it accepts, so
//! it is enough to set it on the listener before Terraform connects.
//!
//! Terraform connects only after it reads the go-plugin handshake line
//! (`1|6|tcp|127.0.0.1:PORT|grpc|CERT`) from our stdout. [`hold_handshake`] points
//! stdout at a pipe before serving; a thread reads the handshake line from it, sets
//! TCP_NODELAY on our listening socket on that port, then writes the line to the
//! real stdout and puts stdout back. So the option is in place before Terraform can
//! connect, without a race and without touching tf-provider's code.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};

/// Redirects stdout until the handshake line has passed; see the module docs.
/// Failures are reported on stderr (Terraform's plugin log) and leave stdout as it
/// was: the provider then works, only slower.
pub fn hold_handshake() {
    if let Err(e) = start() {
        eprintln!("terraform-provider-computearbitrage: cannot set TCP_NODELAY on the plugin listener ({e}); calls may be slower");
    }
}

fn start() -> std::io::Result<()> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: plain POSIX calls on descriptors this process owns.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let real_stdout = libc::fcntl(libc::STDOUT_FILENO, libc::F_DUPFD_CLOEXEC, 0);
        if real_stdout < 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fds[0]);
            libc::close(fds[1]);
            return Err(e);
        }
        if libc::dup2(fds[1], libc::STDOUT_FILENO) < 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fds[0]);
            libc::close(fds[1]);
            libc::close(real_stdout);
            return Err(e);
        }
        libc::close(fds[1]);
        let read_end = std::fs::File::from_raw_fd(fds[0]);
        std::thread::Builder::new()
            .name("plugin-handshake".into())
            .spawn(move || forward_handshake(read_end, real_stdout))?;
    }
    Ok(())
}

fn forward_handshake(read_end: std::fs::File, real_stdout: RawFd) {
    let mut reader = BufReader::new(read_end);
    let mut line = String::new();
    let _ = reader.read_line(&mut line);
    if let Some(port) = handshake_port(&line) {
        if let Err(e) = set_nodelay_on_listener(port) {
            eprintln!("terraform-provider-computearbitrage: TCP_NODELAY not set on port {port}: {e}; calls may be slower");
        }
    }
    // SAFETY: `real_stdout` is the duplicate made in `start`, owned by this thread.
    let mut out = unsafe { std::fs::File::from_raw_fd(real_stdout) };
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
    // Later output goes straight to the real stdout again.
    unsafe {
        libc::dup2(real_stdout, libc::STDOUT_FILENO);
    }
    // Anything already written to the pipe after the handshake is passed on.
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut reader, &mut rest);
    let _ = out.write_all(&rest);
}

/// The port of a go-plugin handshake line `CORE|APP|tcp|HOST:PORT|grpc|…`.
pub fn handshake_port(line: &str) -> Option<u16> {
    let mut fields = line.trim_end().split('|');
    let _core = fields.next()?;
    let _app = fields.next()?;
    if fields.next()? != "tcp" {
        return None;
    }
    fields.next()?.rsplit_once(':')?.1.parse().ok()
}

/// Sets TCP_NODELAY on this process's listening TCP socket(s) bound to `port`.
pub fn set_nodelay_on_listener(port: u16) -> std::io::Result<()> {
    let mut found = false;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Some(fd) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        if is_listener_on(fd, port) {
            let one: libc::c_int = 1;
            // SAFETY: setsockopt on a socket of ours with a valid int option.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    &one as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            found = true;
        }
    }
    if found {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no listening socket of this process on that port",
        ))
    }
}

fn is_listener_on(fd: RawFd, port: u16) -> bool {
    let mut listening: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt/getsockname write at most `len` bytes into our buffers; on a
    // descriptor that is not a socket they fail with ENOTSOCK.
    unsafe {
        if libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            &mut listening as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        ) != 0
            || listening == 0
        {
            return false;
        }
        let mut address: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getsockname(
            fd,
            &mut address as *mut libc::sockaddr_storage as *mut libc::sockaddr,
            &mut len,
        ) != 0
        {
            return false;
        }
        let bound = match i32::from(address.ss_family) {
            libc::AF_INET => {
                let v4 = &*(&address as *const libc::sockaddr_storage as *const libc::sockaddr_in);
                u16::from_be(v4.sin_port)
            }
            libc::AF_INET6 => {
                let v6 = &*(&address as *const libc::sockaddr_storage as *const libc::sockaddr_in6);
                u16::from_be(v6.sin6_port)
            }
            _ => return false,
        };
        bound == port
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn nodelay(fd: RawFd) -> bool {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                &mut value as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            );
        }
        value != 0
    }

    #[test]
    fn the_handshake_line_gives_the_port() {
        assert_eq!(
            handshake_port("1|6|tcp|127.0.0.1:41234|grpc|MIIB\n"),
            Some(41234)
        );
        assert_eq!(handshake_port("1|6|unix|/tmp/plugin.sock|grpc|x"), None);
        assert_eq!(handshake_port("garbage"), None);
        assert_eq!(handshake_port(""), None);
    }

    #[test]
    fn connections_accepted_after_the_fix_have_nodelay_and_before_do_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _before_client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (before, _) = listener.accept().unwrap();
        assert!(
            !nodelay(before.as_raw_fd()),
            "the kernel default is Nagle on"
        );

        set_nodelay_on_listener(port).unwrap();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(nodelay(accepted.as_raw_fd()), "inherited from the listener");
    }

    #[test]
    fn a_port_without_a_listener_of_ours_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        assert!(set_nodelay_on_listener(port).is_err());
    }
}
