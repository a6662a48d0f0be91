//! A real nginx in front of `serve`, configured by what `ipxe-ca nginx-config` writes.

use std::process::{Command, Stdio};

use super::{tool, Lab};
use crate::common::{s, Proc};

/// nginx with the block `ipxe-ca nginx-config` writes, listening on 127.0.0.1:`listen`.
pub fn nginx_conf(lab: &Lab, listen: u16, upstream: u16) -> std::path::PathBuf {
    let block = lab.ok(&[
        "nginx-config",
        "--listen",
        &format!("127.0.0.1:{listen}"),
        "--upstream",
        &format!("127.0.0.1:{upstream}"),
    ]);
    assert!(
        block.contains("ssl_verify_client")
            && block.contains("ssl_crl")
            && block.contains("AES128-SHA"),
        "{block}"
    );
    let t = lab.tmp.path().join("nginx");
    std::fs::create_dir_all(&t).unwrap();
    let conf = t.join("nginx.conf");
    let d = s(&t);
    std::fs::write(
        &conf,
        format!(
            "user root;\ndaemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 64; }}\nhttp {{\n access_log {d}/access.log;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n{block}}}\n"
        ),
    )
    .unwrap();
    conf
}

/// Start nginx with the generated config in front of `serve --behind-proxy` on `upstream`;
/// waits until it listens.
pub fn start_nginx(lab: &Lab, listen: u16, upstream: u16) -> Proc {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("nginx is needed for proxy-mode tests: apt-get install nginx-light (scripts/test.sh does)");
    let conf = nginx_conf(lab, listen, upstream);
    let (ok, out) = tool(nginx, &["-t", "-c", s(&conf)]);
    assert!(ok, "nginx rejects the generated config: {out}");
    let ng = Command::new(nginx)
        .args(["-c", s(&conf)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ng = Proc(ng);
    for _ in 0..400 {
        // Listening, and it is our nginx that listens (not a server that holds the port).
        if let Some(st) = ng.0.try_wait().unwrap() {
            let log = std::fs::read_to_string(conf.with_file_name("error.log")).unwrap_or_default();
            panic!("nginx exited with {st}: {log}");
        }
        if std::net::TcpStream::connect(("127.0.0.1", listen)).is_ok() {
            std::thread::sleep(std::time::Duration::from_millis(100));
            if ng.0.try_wait().unwrap().is_none() {
                return ng;
            }
            continue;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("nginx did not listen on 127.0.0.1:{listen}");
}
