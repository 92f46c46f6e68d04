//! Small helpers over bollard: connecting, running a command inside a container, finding kind's
//! node containers, building a `FROM scratch` image from files in memory.

use std::collections::HashMap;

use anyhow::{Context, bail};
use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, ListContainersOptions, RemoveImageOptions,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

/// The label kind puts on every node container, valued with the cluster's name.
pub const KIND_CLUSTER_LABEL: &str = "io.x-k8s.kind.cluster";
/// The label kind puts on a node container with its role (control-plane, worker).
pub const KIND_ROLE_LABEL: &str = "io.x-k8s.kind.role";

pub const DOCKER_HINT: &str = "is the Docker engine running? Start it (`sudo systemctl start docker`, or `dockerd &`) \
and check that this user can reach /var/run/docker.sock (or set DOCKER_HOST)";

/// The engine named by `DOCKER_HOST` (unix:// or tcp://), else the local socket, at the API
/// version both sides speak: bollard's default is newer than Docker 28's 1.51, and Docker
/// 29.0-29.2 refuse versions below 1.44, so neither a fixed version nor an unversioned path is safe.
pub async fn connect() -> anyhow::Result<Docker> {
    let host = std::env::var("DOCKER_HOST").ok();
    connect_to(host.as_deref()).await
}

/// [`connect`] to a given engine (`unix:///path` or `tcp://host:port`), or the local default.
pub async fn connect_to(host: Option<&str>) -> anyhow::Result<Docker> {
    let docker = match host {
        Some(h) => Docker::connect_with_host(h),
        None => Docker::connect_with_local_defaults(),
    }
    .context(DOCKER_HINT)?;
    let docker = docker.negotiate_version().await.context(DOCKER_HINT)?;
    docker.ping().await.context(DOCKER_HINT)?;
    Ok(docker)
}

/// What a command run in a container printed, and how it exited.
#[derive(Debug)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
}

/// Standard input for [`exec`]: the chunks to write, and a callback told each chunk's size.
pub type Stdin<'a> = (Vec<Bytes>, &'a (dyn Fn(usize) + Sync));

/// Runs `cmd` in a running container. With `stdin`, its chunks are written to the command's
/// standard input (then closed), calling `on_chunk` with each chunk's size.
pub async fn exec(
    docker: &Docker,
    container: &str,
    cmd: &[&str],
    stdin: Option<Stdin<'_>>,
) -> anyhow::Result<ExecOutput> {
    let created = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(cmd.to_vec()),
                attach_stdin: Some(stdin.is_some()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("creating `{}` in container {container}", cmd.join(" ")))?;
    let started = docker
        .start_exec(&created.id, Some(StartExecOptions::default()))
        .await
        .with_context(|| format!("starting `{}` in container {container}", cmd.join(" ")))?;
    let StartExecResults::Attached {
        mut output,
        mut input,
    } = started
    else {
        bail!("`{}` in {container} did not attach", cmd.join(" "));
    };
    let writer = async {
        if let Some((chunks, on_chunk)) = stdin {
            for chunk in chunks {
                input.write_all(&chunk).await?;
                on_chunk(chunk.len());
            }
            input.flush().await?;
            input.shutdown().await?;
        }
        Ok::<_, std::io::Error>(())
    };
    let reader = async {
        let mut stdout = String::new();
        let mut stderr = String::new();
        while let Some(item) = output.next().await {
            match item? {
                bollard::container::LogOutput::StdOut { message } => {
                    stdout.push_str(&String::from_utf8_lossy(&message));
                }
                bollard::container::LogOutput::StdErr { message } => {
                    stderr.push_str(&String::from_utf8_lossy(&message));
                }
                _ => {}
            }
        }
        Ok::<_, bollard::errors::Error>((stdout, stderr))
    };
    let (written, read) = tokio::join!(writer, reader);
    let (stdout, stderr) =
        read.with_context(|| format!("reading `{}` in {container}", cmd.join(" ")))?;
    written.with_context(|| format!("writing to `{}` in {container}: {stderr}", cmd.join(" ")))?;
    let inspect = docker.inspect_exec(&created.id).await?;
    Ok(ExecOutput {
        exit_code: inspect.exit_code.unwrap_or(-1),
        stdout,
        stderr,
    })
}

/// A node container of a kind cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub id: String,
    pub name: String,
    pub role: String,
    pub running: bool,
    /// When Docker created the container (unix seconds).
    pub created_unix_s: i64,
}

/// Every container (running or not) labelled as a node of this kind cluster.
pub async fn kind_nodes(docker: &Docker, cluster: &str) -> anyhow::Result<Vec<Node>> {
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![format!("{KIND_CLUSTER_LABEL}={cluster}")],
    )]);
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .context("listing containers")?;
    let mut nodes: Vec<Node> = containers
        .into_iter()
        .map(|c| Node {
            id: c.id.unwrap_or_default(),
            name: c
                .names
                .and_then(|n| n.first().cloned())
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_owned(),
            role: c
                .labels
                .and_then(|l| l.get(KIND_ROLE_LABEL).cloned())
                .unwrap_or_default(),
            running: c.state.is_some_and(|s| s.to_string() == "running"),
            created_unix_s: c.created.unwrap_or(0),
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(nodes)
}

/// A file to put in an image.
pub struct ImageFile {
    pub path: String,
    pub bytes: Vec<u8>,
    pub mode: u32,
}

/// Builds `FROM scratch` + `files` + the extra Dockerfile lines, from a tar context made in
/// memory: no base image, no pull, works offline. Returns the built image as Docker describes it.
pub async fn build_scratch_image(
    docker: &Docker,
    tag: &str,
    files: &[ImageFile],
    dockerfile_tail: &str,
    labels: &HashMap<String, String>,
) -> anyhow::Result<bollard::models::ImageInspect> {
    let mut dockerfile = String::from("FROM scratch\n");
    for (i, f) in files.iter().enumerate() {
        dockerfile.push_str(&format!("COPY f{i} {}\n", f.path));
    }
    dockerfile.push_str(dockerfile_tail);
    let mut tar = tar::Builder::new(Vec::new());
    let mut append = |name: &str, bytes: &[u8], mode: u32| -> std::io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes)
    };
    append("Dockerfile", dockerfile.as_bytes(), 0o644)?;
    for (i, f) in files.iter().enumerate() {
        append(&format!("f{i}"), &f.bytes, f.mode)?;
    }
    let context = tar.into_inner()?;
    let options = BuildImageOptionsBuilder::new()
        .dockerfile("Dockerfile")
        .t(tag)
        .rm(true)
        .forcerm(true)
        .labels(labels)
        .build();
    let stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    drain_build(stream)
        .await
        .with_context(|| format!("building image {tag}"))?;
    docker
        .inspect_image(tag)
        .await
        .with_context(|| format!("image {tag} missing right after its build"))
}

/// Reads a build stream to its end, so errors reported inside it surface as errors.
async fn drain_build(
    stream: impl Stream<Item = Result<bollard::models::BuildInfo, bollard::errors::Error>>,
) -> anyhow::Result<()> {
    futures::pin_mut!(stream);
    let mut log = String::new();
    while let Some(item) = stream.next().await {
        let info = item?;
        if let Some(line) = &info.stream {
            log.push_str(line);
        }
        if let Some(detail) = info.error_detail.and_then(|d| d.message) {
            bail!("{detail}\n{log}");
        }
    }
    Ok(())
}

/// Runs a future to completion on a thread of its own: for destructors and panic paths, which
/// can't `.await` and may run inside (or outside) a runtime. None if it could not run.
pub fn block_on_thread<F, T>(future: F) -> Option<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()
            .map(|rt| rt.block_on(future))
    })
    .join()
    .ok()
    .flatten()
}

/// Removes an image from a destructor or a panic path.
pub fn remove_image_blocking(docker: &Docker, reference: &str) {
    let (docker, reference) = (docker.clone(), reference.to_owned());
    block_on_thread(async move {
        let options = RemoveImageOptions {
            force: true,
            ..Default::default()
        };
        let _ = docker.remove_image(&reference, Some(options), None).await;
    });
}
