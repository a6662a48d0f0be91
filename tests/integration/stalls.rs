//! Serving through what a hostile or careless host does to `serve`'s own outputs and
//! listeners: a log pipe nobody reads, floods of idle connections from many addresses.

use std::process::{Command, Stdio};

use crate::util::{bin, free_port, Lab, Proc};

/// stdout and stderr on one pipe that nobody reads (`2>&1 | tee` with tee stopped): once the
/// access log's queue is full, the messages that say so must not block an event-loop thread.
#[test]
fn a_log_pipe_nobody_reads_never_stops_serving_boards() {
    let lab = Lab::init();
    lab.enroll("p1", &[]);
    let (reader, writer) = std::io::pipe().unwrap();
    let (https, http) = (free_port(), free_port());
    let _serve = Proc(
        Command::new(bin())
            .arg("--dir")
            .arg(&lab.dir)
            .args(["serve", "--https", &format!("127.0.0.1:{https}")])
            .args(["--http", &format!("127.0.0.1:{http}")])
            .stdin(Stdio::null())
            .stdout(Stdio::from(writer.try_clone().unwrap()))
            .stderr(Stdio::from(writer))
            .spawn()
            .unwrap(),
    );
    crate::util::wait_for(
        "serve to listen",
        std::time::Duration::from_secs(20),
        || std::net::TcpStream::connect(("127.0.0.1", https)).ok(),
    );
    // 12,000 requests on one connection: the pipe (64 KiB) and the access log's queue (8,192
    // lines) fill, and lines are dropped from then on.
    let o = Command::new("timeout")
        .args(["90", "curl", "-s", "-o", "/dev/null", "--max-time", "5"])
        .args(["-w", "%{http_code}\n"])
        .arg(format!("http://127.0.0.1:{http}/files/nope[1-12000]"))
        .output()
        .unwrap();
    let codes = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        codes.lines().filter(|c| *c == "404").count(),
        12000,
        "every request answered"
    );
    for _ in 0..3 {
        let (code, body) = lab.curl_as_with(
            Some("p1"),
            &format!("https://127.0.0.1:{https}/boot.ipxe"),
            &["--max-time", "5"],
        );
        assert_eq!(code, 200, "a board is still served: {body}");
    }
    drop(reader);
}

/// Let this test process hold thousands of sockets.
fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    l.current = l.maximum;
    setrlimit(Resource::Nofile, l).unwrap();
}

/// A TCP connection to 127.0.0.1:`port` from the loopback address `from`, that sends nothing.
fn idle_from(from: std::net::Ipv4Addr, port: u16) -> Option<std::net::TcpStream> {
    use rustix::net::{bind, connect, socket, AddressFamily, SocketType};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).ok()?;
    bind(&fd, &std::net::SocketAddr::from((from, 0))).ok()?;
    connect(&fd, &std::net::SocketAddr::from(([127, 0, 0, 1], port))).ok()?;
    Some(std::net::TcpStream::from(fd))
}

/// 128 addresses × 32 idle connections that never send a TLS byte: each address stays within
/// its cap, together they are four times the connection budget. Boards keep booting.
#[test]
fn a_flood_of_idle_connections_from_many_addresses_never_locks_boards_out() {
    raise_nofile();
    let lab = Lab::init();
    lab.enroll("b1", &[]);
    let srv = lab.serve(&[]);
    let mut held = Vec::new();
    for a in 0..128u8 {
        for _ in 0..32 {
            if let Some(c) = idle_from(std::net::Ipv4Addr::new(127, 0, 1, a), srv.https) {
                held.push(c);
            }
        }
    }
    assert!(
        held.len() > 4000,
        "the flood opened {} connections",
        held.len()
    );
    for _ in 0..3 {
        let (code, body) =
            lab.curl_as_with(Some("b1"), &srv.url("/boot.ipxe"), &["--max-time", "5"]);
        assert_eq!(code, 200, "a board's script during the flood: {body}");
    }
    drop(held);
}

/// In proxy mode the trusted proxy's address gets the whole budget, but only once it has
/// proved itself with the proxy secret: 4,096 idle connections from 127.0.0.1 (any local
/// process) do not starve nginx.
#[test]
fn idle_connections_from_the_proxy_address_without_the_secret_do_not_starve_nginx() {
    raise_nofile();
    let lab = Lab::init();
    lab.enroll("px", &[]);
    let (nginx_port, http) = (free_port(), free_port());
    let _srv = lab.serve_on(
        free_port(),
        http,
        &["--behind-proxy", "--trusted-proxy", "127.0.0.1"],
    );
    let _ng = crate::util::start_nginx(&lab, nginx_port, http);
    let mut held = Vec::new();
    for _ in 0..4096 {
        if let Some(c) = idle_from(std::net::Ipv4Addr::new(127, 0, 0, 1), http) {
            held.push(c);
        }
    }
    assert!(held.len() > 4000, "opened {}", held.len());
    for _ in 0..3 {
        let (code, body) = lab.curl_as_with(
            Some("px"),
            &format!("https://127.0.0.1:{nginx_port}/boot.ipxe"),
            &["--max-time", "5"],
        );
        assert_eq!(code, 200, "a board's script through nginx: {body}");
    }
    drop(held);
}

/// A scrape reads every board file (for the expiry dates): scrapers in a loop must not make
/// the server read the registry again and again. Five scrapes read board b1's file once.
#[test]
fn scrapes_in_a_row_read_the_registry_once() {
    let lab = Lab::init();
    lab.enroll("b1", &[]);
    let metrics = free_port();
    let (strace, _https, trace) = crate::util::serve_traced_with(
        &lab,
        Stdio::null(),
        "metrics",
        "trace=openat",
        &["--metrics", &format!("127.0.0.1:{metrics}")],
    );
    for _ in 0..5 {
        let (ok, out) = crate::util::tool(
            "curl",
            &[
                "-s",
                "--max-time",
                "10",
                &format!("http://127.0.0.1:{metrics}/metrics"),
            ],
        );
        assert!(
            ok && out.contains("ipxe_ca_expiry_remaining_seconds"),
            "{out}"
        );
    }
    let lines = crate::util::stop_traced(strace, &trace);
    let reads = lines
        .iter()
        .filter(|l| l.contains("boards/b1.toml") && !l.contains("ENOENT"))
        .count();
    // Once at start (the expiry warning) and once for the five scrapes.
    assert!(
        reads <= 2,
        "board b1's file read {reads} times for 5 scrapes"
    );
}

/// One address beyond `--max-per-ip` gets its newcomers closed at once (and counted), well
/// below the listener's budget: the cap is the address's, not the listener's.
#[test]
fn one_address_beyond_its_cap_is_closed_at_once_below_the_budget() {
    let lab = Lab::init();
    let metrics = free_port();
    let srv = lab.serve(&[
        "--max-per-ip",
        "4",
        "--max-connections",
        "64",
        "--metrics",
        &format!("127.0.0.1:{metrics}"),
    ]);
    let held: Vec<_> = (0..12)
        .filter_map(|_| idle_from(std::net::Ipv4Addr::new(127, 0, 0, 9), srv.https))
        .collect();
    assert_eq!(held.len(), 12);
    // The server closes what is beyond the cap: those reads end at once (EOF or reset);
    // the others are still waiting for a ClientHello.
    let closed = held
        .iter()
        .filter(|c| {
            c.set_read_timeout(Some(std::time::Duration::from_millis(500)))
                .unwrap();
            let mut b = [0u8; 1];
            match std::io::Read::read(&mut &**c, &mut b) {
                Ok(n) => n == 0,
                Err(e) => !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
            }
        })
        .count();
    let (_, text) = crate::util::tool(
        "curl",
        &["-s", &format!("http://127.0.0.1:{metrics}/metrics")],
    );
    // On a failure, what the server counted and said.
    let refused: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("ipxe_ca_refused_connections_total"))
        .collect();
    assert_eq!(
        closed,
        8,
        "12 connections, a cap of 4: {refused:?}\n{}",
        srv.output()
    );
    let n = crate::util::metric(
        &text,
        "ipxe_ca_refused_connections_total{reason=\"per-address-cap\"}",
    );
    assert_eq!(n, 8.0, "{text}");
}
