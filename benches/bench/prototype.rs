//! The prototype stack measured beside `serve`: nginx with mutual TLS in front of gunicorn and
//! a Flask app mapping fingerprints to scripts.

use super::*;

pub(crate) const FLASK_APP: &str = r##"
import json, os
from flask import Flask, request, Response
app = Flask(__name__)
BOARDS = json.load(open(os.environ["BOARDS_JSON"]))
@app.route("/boot.ipxe")
def boot():
    fp = request.headers.get("X-SSL-Client-Fingerprint", "")
    b = BOARDS.get(fp)
    if b is None:
        return Response("#!ipxe\necho not registered\n", status=403, mimetype="text/plain")
    script = "#!ipxe\necho board %s\nkernel http://127.0.0.1/files/vmlinuz s3=%s\nboot\n" % (b["name"], b["s3"])
    return Response(script, mimetype="text/plain")
"##;

/// Debian's gunicorn with Debian's Flask (packages gunicorn, python3-flask).
pub(crate) fn gunicorn() -> R<&'static str> {
    let g = "/usr/bin/gunicorn";
    if !Path::new(g).exists() {
        return Err("gunicorn missing: apt-get install gunicorn python3-flask".into());
    }
    Ok(g)
}

pub(crate) fn nginx_bin() -> R<&'static str> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| "nginx missing: apt-get install nginx-light".into())
}

pub(crate) fn nginx_conf(dir: &Path, body: &str) -> R<PathBuf> {
    nginx_conf_with(dir, "auto", body)
}

/// `workers`: nginx's worker_processes.
pub(crate) fn nginx_conf_with(dir: &Path, workers: &str, body: &str) -> R<PathBuf> {
    let d = s(dir);
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "user root;\nworker_processes {workers};\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 1024; }}\nhttp {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n{body}\n}}\n"
        ),
    )?;
    Ok(conf)
}

/// The prototype stack: nginx with the server block `block(port, gunicorn_port)` in front of
/// gunicorn (2 workers) running the Flask app, which maps the SHA-1 fingerprints of `certs` to
/// boards `b00000`, `b00001`, …
pub(crate) struct Prototype {
    pub(crate) nginx: Proc,
    pub(crate) gunicorn: Proc,
    pub(crate) port: u16,
}

impl Prototype {
    pub(crate) fn start(
        d: &Path,
        certs: &[PathBuf],
        block: impl FnOnce(u16, u16) -> String,
    ) -> R<Prototype> {
        Self::start_with(d, certs, None, block)
    }

    /// `workers`: nginx's worker processes and gunicorn's (default: nginx one per core,
    /// gunicorn 2).
    pub(crate) fn start_with(
        d: &Path,
        certs: &[PathBuf],
        workers: Option<usize>,
        block: impl FnOnce(u16, u16) -> String,
    ) -> R<Prototype> {
        let mut map = serde_json::Map::new();
        for (i, c) in certs.iter().enumerate() {
            let der = pem::parse(std::fs::read(c)?)?.into_contents();
            let fp = hex::encode(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &der)
                    .as_ref(),
            );
            map.insert(
                fp,
                serde_json::json!({"name": format!("b{i:05}"), "s3": "bench-secret"}),
            );
        }
        let boards = d.join("boards.json");
        std::fs::write(&boards, serde_json::to_vec(&map)?)?;
        std::fs::write(d.join("app.py"), FLASK_APP)?;
        let gport = free_port();
        let gunicorn = spawn(
            Command::new(gunicorn()?)
                .args(["-w", &workers.unwrap_or(2).to_string()])
                .args(["-b", &format!("127.0.0.1:{gport}"), "app:app"])
                .current_dir(d)
                .env("BOARDS_JSON", &boards),
        )?;
        let port = free_port();
        let ndir = d.join("nginx");
        std::fs::create_dir_all(&ndir)?;
        let nworkers = workers.map_or("auto".to_string(), |w| w.to_string());
        let conf = nginx_conf_with(&ndir, &nworkers, &block(port, gport))?;
        let nginx = spawn(Command::new(nginx_bin()?).args(["-c", s(&conf)]))?;
        wait_port(gport)?;
        wait_port(port)?;
        Ok(Prototype {
            nginx,
            gunicorn,
            port,
        })
    }

    /// [`usage`] of nginx and gunicorn together, workers included.
    pub(crate) fn usage(&self) -> (f64, f64, u64) {
        let (a, ka, ra) = usage(self.nginx.0.id());
        let (b, kb, rb) = usage(self.gunicorn.0.id());
        (a + b, ka + kb, ra + rb)
    }
}
