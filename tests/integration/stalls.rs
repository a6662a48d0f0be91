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
