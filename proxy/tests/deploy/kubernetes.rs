//! The Kubernetes base (deploy/kubernetes): the manifests read with a YAML parser
//! (yaml_serde), checked against each other and against the binary (flags and
//! variables through clap and `switchyard check`, probe paths and ports, the drain
//! timing, the writable mounts a read-only root needs), the container run as a
//! process and probed as the kubelet would, and `kubectl kustomize` where kubectl is
//! installed. A cluster is not needed; every check also runs on a broken copy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use http::{Method, StatusCode};
use serde_json::Value as J;

use super::*;
use crate::common::*;

const K8S_DIR: &str = "deploy/kubernetes";

fn k8s_files() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(root().join(K8S_DIR)).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.insert(
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            );
        }
    }
    out
}

/// The Deployment's switchyard container, ready to run: args, env (secrets
/// resolved), the files it mounts.
struct PodSpec {
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// mount path → (file name → content), from ConfigMap volumes.
    config_mounts: BTreeMap<String, BTreeMap<String, String>>,
    readiness: Option<String>,
    liveness: Option<String>,
}

fn b64decode(s: &str) -> Option<String> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        bits = (bits << 6) | A.iter().position(|x| *x == c)? as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    String::from_utf8(out).ok()
}

fn named<'a>(objs: &'a [J], kind: &str, name: &str) -> Option<&'a J> {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn secret_value(objs: &[J], name: &str, key: &str) -> Option<String> {
    let s = named(objs, "Secret", name)?;
    scalar(&s["stringData"][key]).or_else(|| scalar(&s["data"][key]).and_then(|v| b64decode(&v)))
}

/// `labels` holds every pair of `selector`.
fn selects(selector: &J, labels: &J) -> bool {
    selector
        .as_object()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

fn check_kubernetes(files: &BTreeMap<String, String>) -> (Vec<String>, Option<PodSpec>) {
    let mut p = Vec::new();
    let Some(kust) = files.get("kustomization.yaml") else {
        return (vec![format!("{K8S_DIR}: no kustomization.yaml")], None);
    };
    let kust = match yaml_one(kust) {
        Ok(v) => v,
        Err(e) => return (vec![format!("kustomization.yaml: {e}")], None),
    };
    let resources = string_list(&kust["resources"]);
    for f in files.keys().filter(|f| *f != "kustomization.yaml") {
        if !resources.contains(f) {
            p.push(format!(
                "{K8S_DIR}/{f} is not listed in kustomization.yaml resources"
            ));
        }
    }
    let mut objs = Vec::new();
    for r in &resources {
        match files.get(r).map(|t| yaml_docs(t)) {
            None => p.push(format!("kustomization.yaml: resource {r} does not exist")),
            Some(Err(e)) => p.push(format!("{K8S_DIR}/{r}: {e}")),
            Some(Ok(docs)) => objs.extend(docs),
        }
    }
    let kinds = |kind: &str| -> Vec<&J> { objs.iter().filter(|o| o["kind"] == kind).collect() };
    for want in [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ConfigMap",
        "Secret",
    ] {
        if kinds(want).is_empty() {
            p.push(format!("{K8S_DIR}: no {want}"));
        }
    }
    let Some(dep) = kinds("Deployment").first().cloned().cloned() else {
        return (p, None);
    };
    let dep_name = scalar(&dep["metadata"]["name"]).unwrap_or_default();
    let replicas = dep["spec"]["replicas"].as_u64().unwrap_or(1);
    if replicas != 3 {
        p.push(format!("Deployment: {replicas} replicas, want 3"));
    }
    let pod_labels = &dep["spec"]["template"]["metadata"]["labels"];
    if !selects(&dep["spec"]["selector"]["matchLabels"], pod_labels) {
        p.push("Deployment: selector does not match the pod template's labels".into());
    }
    let pod = &dep["spec"]["template"]["spec"];
    let images: Vec<String> = kust["images"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| scalar(&i["name"]))
        .collect();
    let Some(c) = pod["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| scalar(&c["image"]).is_some_and(|i| i.split(':').next() == Some("switchyard")))
        .cloned()
    else {
        p.push("Deployment: no container with image `switchyard`".into());
        return (p, None);
    };
    if !images.iter().any(|i| i == "switchyard") {
        p.push("kustomization.yaml: images[] does not name the `switchyard` image".into());
    }
    let what = "Deployment";
    let args = string_list(&c["args"]);
    if !string_list(&c["command"]).is_empty() {
        p.push(
            "Deployment: `command` replaces the image's ENTRYPOINT (switchyard); use args".into(),
        );
    }
    let mut env: Vec<(String, String)> = IMAGE_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = scalar(&e["name"]).unwrap_or_default();
        check_env_name(&name, what, &mut p);
        let value = if let Some(v) = scalar(&e["value"]) {
            Some(v)
        } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
            let (sn, key) = (
                scalar(&r["name"]).unwrap_or_default(),
                scalar(&r["key"]).unwrap_or_default(),
            );
            let v = secret_value(&objs, &sn, &key);
            if v.is_none() && r.get("optional") != Some(&J::Bool(true)) {
                p.push(format!(
                    "Deployment: env {name} needs key `{key}` of Secret `{sn}`, which is not there"
                ));
            }
            v
        } else if let Some(r) = e["valueFrom"]["configMapKeyRef"].as_object() {
            let (cn, key) = (
                scalar(&r["name"]).unwrap_or_default(),
                scalar(&r["key"]).unwrap_or_default(),
            );
            let v = named(&objs, "ConfigMap", &cn).and_then(|m| scalar(&m["data"][&key]));
            if v.is_none() {
                p.push(format!(
                    "Deployment: env {name} needs key `{key}` of ConfigMap `{cn}`"
                ));
            }
            v
        } else {
            Some("from-the-pod".into())
        };
        if let Some(v) = value {
            env.retain(|(n, _)| n != &name);
            env.push((name, v));
        }
    }
    if env_get(&env, "SWITCHYARD_ADMIN_TOKEN").is_none_or(str::is_empty) {
        p.push(
            "Deployment: no SWITCHYARD_ADMIN_TOKEN: the admin listener (probes) stays on loopback"
                .into(),
        );
    }
    // Volumes and mounts.
    let volumes: BTreeMap<String, J> = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some((scalar(&v["name"])?, v.clone())))
        .collect();
    let mut config_mounts = BTreeMap::new();
    let mut writable = Vec::new();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let (vn, path) = (
            scalar(&m["name"]).unwrap_or_default(),
            scalar(&m["mountPath"]).unwrap_or_default(),
        );
        let Some(v) = volumes.get(&vn) else {
            p.push(format!(
                "Deployment: mount {path} uses volume `{vn}`, which is not declared"
            ));
            continue;
        };
        if m["readOnly"] != J::Bool(true) && !v["emptyDir"].is_null() {
            writable.push(path.clone());
        }
        if let Some(cm) = scalar(&v["configMap"]["name"]) {
            match named(&objs, "ConfigMap", &cm) {
                None => p.push(format!(
                    "Deployment: volume `{vn}` uses ConfigMap `{cm}`, which does not exist"
                )),
                Some(obj) => {
                    let data: BTreeMap<String, String> = obj["data"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .filter_map(|(k, v)| Some((k.clone(), scalar(v)?)))
                        .collect();
                    if !m["subPath"].is_null() {
                        p.push(format!("Deployment: {path} uses subPath: ConfigMap updates would not reach the pod"));
                    }
                    config_mounts.insert(path.clone(), data);
                }
            }
        }
    }
    let config_path = flag_value(&args, "--config")
        .or_else(|| flag_value(&args, "-c"))
        .or_else(|| env_get(&env, "SWITCHYARD_CONFIG").map(String::from));
    let config_text = config_path.as_ref().and_then(|path| {
        config_mounts.iter().find_map(|(dir, data)| {
            let name = path.strip_prefix(&format!("{}/", dir.trim_end_matches('/')))?;
            data.get(name).cloned()
        })
    });
    let tmp = tempfile::tempdir().unwrap();
    let parsed = match (&config_path, &config_text) {
        (Some(path), Some(text)) => {
            let file = tmp.path().join("config.yaml");
            std::fs::write(&file, text).unwrap();
            check_config_file(&file, &format!("Deployment: {path} (ConfigMap)"), &mut p);
            check_with_clap(&args, &env, &file, what, &mut p);
            switchyard::config::parse(text, "configmap").ok()
        }
        (path, _) => {
            p.push(format!(
                "Deployment: config {path:?} is not a file of a mounted ConfigMap"
            ));
            None
        }
    };
    // Ports: the container's, the listeners', the config's, the Services'.
    let ports: BTreeMap<String, u16> = c["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| Some((scalar(&x["name"])?, x["containerPort"].as_u64()? as u16)))
        .collect();
    let (proxy, admin) = listen_ports(&args, &env, config_text.as_deref());
    if ports.get("http").copied() != proxy || ports.get("admin").copied() != admin {
        p.push(format!(
            "Deployment: container ports {ports:?}, but the replica listens on {proxy:?} (proxy) and {admin:?} (admin)"
        ));
    }
    if let Some(cfg) = &parsed
        && (Some(cfg.server.port) != proxy || Some(cfg.server.admin_port) != admin)
    {
        p.push(format!(
            "ConfigMap: server.port {} / admin_port {} differ from the listeners {proxy:?} / {admin:?}",
            cfg.server.port, cfg.server.admin_port
        ));
    }
    let resolve = |port: &J| -> Option<u16> {
        match port {
            J::Number(n) => n.as_u64().map(|n| n as u16),
            J::String(s) => ports.get(s).copied(),
            _ => None,
        }
    };
    let mut probe = |kind: &str, want: &str| -> Option<String> {
        let get = &c[kind]["httpGet"];
        let path = scalar(&get["path"]);
        if path.as_deref() != Some(want) {
            p.push(format!("Deployment: {kind} path {path:?}, want {want}"));
        }
        if resolve(&get["port"]) != admin || admin.is_none() {
            p.push(format!(
                "Deployment: {kind} port {:?} is not the admin port {admin:?}",
                get["port"]
            ));
        }
        path
    };
    let readiness = probe("readinessProbe", "/readyz");
    let liveness = probe("livenessProbe", "/healthz");
    // Shutdown: the kubelet must wait for preStop + the drain.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    let pre_stop = {
        let ps = &c["lifecycle"]["preStop"];
        ps["sleep"]["seconds"].as_u64().or_else(|| {
            let cmd = string_list(&ps["exec"]["command"]);
            (cmd.first().map(String::as_str) == Some("sleep"))
                .then(|| cmd.get(1)?.parse().ok())
                .flatten()
        })
    }
    .unwrap_or(0);
    if let Some(cfg) = &parsed {
        let drain = cfg.server.grace_period.get().as_secs();
        if grace <= drain + pre_stop {
            p.push(format!(
                "Deployment: terminationGracePeriodSeconds {grace} is not longer than preStop {pre_stop}s + server.grace_period {drain}s"
            ));
        }
    }
    // Commands the kubelet runs inside the container: the image is FROM scratch, so
    // only the programs it holds exist there (no `sleep`: preStop uses `sleep:`).
    let hooks = [
        &c["lifecycle"]["preStop"],
        &c["lifecycle"]["postStart"],
        &c["readinessProbe"],
        &c["livenessProbe"],
        &c["startupProbe"],
    ];
    for hook in hooks {
        if let Some(program) = string_list(&hook["exec"]["command"]).first()
            && !IMAGE_PROGRAMS.contains(&program.as_str())
        {
            p.push(format!(
                "Deployment: exec of `{program}`, which the image does not have (it has {IMAGE_PROGRAMS:?})"
            ));
        }
    }
    for r in ["cpu", "memory"] {
        if c["resources"]["requests"][r].is_null() {
            p.push(format!("Deployment: no {r} request"));
        }
    }
    // A read-only root: whatever switchyard writes must be on a writable mount.
    if c["securityContext"]["readOnlyRootFilesystem"] == J::Bool(true) {
        for var in ["SWITCHYARD_GIT_CACHE", "HOME"] {
            match env_get(&env, var) {
                Some(dir) if writable.iter().any(|w| dir == w || dir.starts_with(&format!("{w}/"))) => {}
                other => p.push(format!("Deployment: read-only root, but {var}={other:?} is not on a writable mount ({writable:?})")),
            }
        }
    }
    // The image's user (numeric, so runAsNonRoot can verify it).
    let uid: u64 = IMAGE_USER.split(':').next().unwrap().parse().unwrap();
    let run_as = pod["securityContext"]["runAsUser"]
        .as_u64()
        .or(c["securityContext"]["runAsUser"].as_u64());
    if run_as.is_some_and(|r| r != uid) {
        p.push(format!(
            "Deployment: runAsUser {run_as:?} vs the image's USER {IMAGE_USER}"
        ));
    }

    // Services, PDB, HPA.
    let services = kinds("Service");
    if !services.iter().any(|s| s["spec"]["clusterIP"] == "None") {
        p.push("Kubernetes: no headless Service (clusterIP: None) for DNS discovery".into());
    }
    for s in &services {
        let sn = scalar(&s["metadata"]["name"]).unwrap_or_default();
        if !selects(&s["spec"]["selector"], pod_labels) {
            p.push(format!(
                "Service {sn}: selector does not select the Deployment's pods"
            ));
        }
        for port in s["spec"]["ports"].as_array().into_iter().flatten() {
            let target = if port["targetPort"].is_null() {
                &port["port"]
            } else {
                &port["targetPort"]
            };
            if resolve(target).is_none_or(|t| !ports.values().any(|x| *x == t)) {
                p.push(format!(
                    "Service {sn}: targetPort {target} is not a container port"
                ));
            }
        }
    }
    for pdb in kinds("PodDisruptionBudget") {
        if !selects(&pdb["spec"]["selector"]["matchLabels"], pod_labels) {
            p.push("PodDisruptionBudget: selector does not select the Deployment's pods".into());
        }
        if let Some(min) = pdb["spec"]["minAvailable"].as_u64()
            && min >= replicas
        {
            p.push(format!("PodDisruptionBudget: minAvailable {min} blocks every eviction at {replicas} replicas"));
        }
    }
    for hpa in kinds("HorizontalPodAutoscaler") {
        let t = &hpa["spec"]["scaleTargetRef"];
        if t["kind"] != "Deployment" || scalar(&t["name"]).as_deref() != Some(dep_name.as_str()) {
            p.push(format!(
                "HorizontalPodAutoscaler: scales {t}, not Deployment {dep_name}"
            ));
        }
        let (min, max) = (
            hpa["spec"]["minReplicas"].as_u64().unwrap_or(1),
            hpa["spec"]["maxReplicas"].as_u64().unwrap_or(0),
        );
        if min > max || min > replicas {
            p.push(format!(
                "HorizontalPodAutoscaler: min {min} / max {max} vs {replicas} replicas"
            ));
        }
    }

    let spec = PodSpec {
        args,
        env,
        config_mounts,
        readiness,
        liveness,
    };
    (p, Some(spec))
}

/// Runs the Deployment's container as written (config from the ConfigMap, secrets
/// from the Secret, a real Redis) and probes it as the kubelet would.
async fn run_deployment(files: &BTreeMap<String, String>) -> Vec<String> {
    let (problems, spec) = check_kubernetes(files);
    let Some(spec) = spec else {
        return problems;
    };
    let mut p = Vec::new();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut args = spec.args.clone();
    for (mount, data) in &spec.config_mounts {
        let local = dir.path().join(mount.trim_start_matches('/'));
        std::fs::create_dir_all(&local).unwrap();
        for (name, content) in data {
            std::fs::write(local.join(name), content).unwrap();
        }
        for a in &mut args {
            if a.starts_with(mount.as_str()) {
                *a = format!("{}{}", local.display(), &a[mount.len()..]);
            }
        }
    }
    args.extend(["--log-format".into(), "json".into()]);
    let env = localize(
        &spec.env,
        &[
            ("SWITCHYARD_LISTEN", "127.0.0.1:0".into()),
            ("SWITCHYARD_ADMIN_LISTEN", "127.0.0.1:0".into()),
            ("SWITCHYARD_REDIS_URL", redis.url()),
            (
                "SWITCHYARD_GIT_CACHE",
                dir.path().join("git").display().to_string(),
            ),
            ("HOME", dir.path().display().to_string()),
            (
                "SWITCHYARD_DASHBOARD_DIR",
                root().join("dashboard-app/dist").display().to_string(),
            ),
        ],
    );
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let proc = Proc::spawn(&args_ref, &env_ref);
    for (kind, path) in [
        ("readinessProbe", &spec.readiness),
        ("livenessProbe", &spec.liveness),
    ] {
        let Some(path) = path else { continue };
        match send_with(&client(), Method::GET, &url(proc.admin, path), &[], None).await {
            Ok(r) if r.status == StatusCode::OK => {}
            other => p.push(format!(
                "Deployment: {kind} GET {path} answered {:?}",
                other.map(|r| r.status)
            )),
        }
    }
    if proc.logs().contains("loopback only") {
        p.push("Deployment: the replica says its admin API is on loopback only (no token?)".into());
    }
    let token = env_get(&env, "SWITCHYARD_ADMIN_TOKEN").unwrap_or_default();
    let bearer = format!("Bearer {token}");
    match send_with(
        &client(),
        Method::GET,
        &url(proc.admin, "/admin/cluster"),
        &[("authorization", &bearer)],
        None,
    )
    .await
    {
        Ok(r) if r.status == StatusCode::OK && r.json()["store"]["connected"] == true => {}
        other => p.push(format!(
            "Deployment: not connected to Redis: {:?}",
            other.map(|r| r.body)
        )),
    }
    p
}

fn env_get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
    env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&format!("{flag}=")).map(String::from)
        }
    })
}

/// The replica's proxy and admin ports: flag, else variable, else the config.
fn listen_ports(
    args: &[String],
    env: &[(String, String)],
    config: Option<&str>,
) -> (Option<u16>, Option<u16>) {
    let from = |flag: &str, var: &str, fallback: Option<u16>| {
        flag_value(args, flag)
            .or_else(|| env_get(env, var).map(String::from))
            .and_then(|a| a.parse::<SocketAddr>().ok().map(|s| s.port()))
            .or(fallback)
    };
    let cfg = config.and_then(|t| switchyard::config::parse(t, "config").ok());
    (
        from(
            "--listen",
            "SWITCHYARD_LISTEN",
            cfg.as_ref().map(|c| c.server.port),
        ),
        from(
            "--admin-listen",
            "SWITCHYARD_ADMIN_LISTEN",
            cfg.as_ref().map(|c| c.server.admin_port),
        ),
    )
}

/// Lets clap itself judge flags, their values and the environment's values:
/// `switchyard ARGS check CONFIG` with ENV (and nothing else) set.
fn check_with_clap(
    args: &[String],
    env: &[(String, String)],
    config: &Path,
    what: &str,
    problems: &mut Vec<String>,
) {
    let args: Vec<&String> = args.iter().filter(|a| a.as_str() != "run").collect();
    let mut cmd = Command::new(SWITCHYARD);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(args)
        .arg("check")
        .arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    if !out.status.success() {
        problems.push(format!(
            "{what}: `switchyard ... check {}` refused it: {}{}",
            config.display(),
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ));
    }
}

/// `switchyard check FILE`.
fn check_config_file(path: &Path, what: &str, problems: &mut Vec<String>) {
    let out = Command::new(SWITCHYARD)
        .arg("check")
        .arg(path)
        .output()
        .unwrap();
    if !out.status.success() {
        problems.push(format!(
            "{what}: switchyard check: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
}

/// Environment with the addresses only the cluster has replaced by loopback ones.
fn localize(env: &[(String, String)], replace: &[(&str, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| !replace.iter().any(|(r, _)| r == k))
        .cloned()
        .collect();
    for (k, v) in replace {
        out.push((k.to_string(), v.clone()));
    }
    out
}

// === the tests ===

#[test]
fn kubernetes_base_is_consistent() {
    let (problems, _) = check_kubernetes(&k8s_files());
    report(K8S_DIR, &problems);
}

#[test]
fn kustomize_renders_the_base_when_kubectl_is_installed() {
    let Ok(out) = Command::new("kubectl")
        .args(["kustomize"])
        .arg(root().join(K8S_DIR))
        .output()
    else {
        eprintln!("kubectl not installed: kustomize rendering not checked");
        return;
    };
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = yaml_docs(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(
        docs.len(),
        k8s_files().len() - 1,
        "one object per resource file"
    );
    assert!(
        docs.iter()
            .all(|d| d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "switchyard")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_replica_runs_and_answers_the_kubelet_probes() {
    report("Deployment", &run_deployment(&k8s_files()).await);
}

#[test]
fn broken_kubernetes_manifests_are_caught() {
    let files = k8s_files();
    let cases = [
        (
            "deployment.yaml",
            "terminationGracePeriodSeconds: 45",
            "terminationGracePeriodSeconds: 30",
            "terminationGracePeriodSeconds",
        ),
        (
            "deployment.yaml",
            "name: SWITCHYARD_GIT_CACHE",
            "name: SWITCHYARD_GIT_CASH",
            "SWITCHYARD_GIT_CASH",
        ),
        ("deployment.yaml", "- --config\n", "- --conf\n", "--conf"),
        (
            "deployment.yaml",
            "key: admin-token",
            "key: admin_token",
            "admin_token",
        ),
        ("deployment.yaml", "path: /readyz", "path: /ready", "/ready"),
        (
            "deployment.yaml",
            "containerPort: 8081",
            "containerPort: 9081",
            "container ports",
        ),
        (
            "deployment.yaml",
            "  replicas: 3",
            "  replicas: 2",
            "replicas",
        ),
        (
            "deployment.yaml",
            "sleep:\n                seconds: 5",
            "exec:\n                command: [\"sleep\", \"5\"]",
            "exec of `sleep`",
        ),
        (
            "deployment.yaml",
            "value: /var/lib/switchyard/git",
            "value: /srv/git",
            "writable",
        ),
        (
            "service.yaml",
            "targetPort: admin",
            "targetPort: admn",
            "admn",
        ),
        (
            "configmap.yaml",
            "    strategy: round-robin",
            "    strategy: fastest",
            "switchyard check",
        ),
        (
            "configmap.yaml",
            "      grace_period: 30s",
            "      grace_period: 60s",
            "terminationGracePeriodSeconds",
        ),
        (
            "hpa.yaml",
            "    name: switchyard\n  minReplicas",
            "    name: switchyards\n  minReplicas",
            "HorizontalPodAutoscaler",
        ),
        (
            "pdb.yaml",
            "matchLabels:\n      app.kubernetes.io/name: switchyard",
            "matchLabels:\n      app.kubernetes.io/name: switchyrd",
            "PodDisruptionBudget",
        ),
        (
            "kustomization.yaml",
            "  - hpa.yaml\n",
            "",
            "hpa.yaml is not listed",
        ),
        (
            "service-headless.yaml",
            "clusterIP: None",
            "clusterIP: \"\"",
            "headless",
        ),
    ];
    for (file, from, to, needle) in cases {
        let mut broken = files.clone();
        let text = broken.get_mut(file).unwrap();
        *text = mutate(text, from, to);
        let (problems, _) = check_kubernetes(&broken);
        caught(&format!("{file}: {from} -> {to}"), &problems, needle);
    }
}

/// The Deployment run with a readiness probe on a path the admin API does not serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_deployment_fails_when_run() {
    let mut files = k8s_files();
    let dep = files.get_mut("deployment.yaml").unwrap();
    *dep = mutate(dep, "path: /readyz", "path: /ready");
    caught(
        "Deployment probing /ready",
        &run_deployment(&files).await,
        "GET /ready answered",
    );
}
