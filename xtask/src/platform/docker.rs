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

/// The running node containers of a kind cluster; an error saying how to make one when there
/// are none.
pub async fn running_kind_nodes(docker: &Docker, cluster: &str) -> anyhow::Result<Vec<Node>> {
    let nodes: Vec<Node> = kind_nodes(docker, cluster)
        .await?
        .into_iter()
        .filter(|n| n.running)
        .collect();
    anyhow::ensure!(
        !nodes.is_empty(),
        "no running node of kind cluster {cluster:?} (containers labelled {KIND_CLUSTER_LABEL}={cluster}); create it with `cargo xtask cluster up`"
    );
    Ok(nodes)
}

/// The Docker network kind puts its nodes on (`KIND_EXPERIMENTAL_DOCKER_NETWORK` aside).
pub const KIND_NETWORK: &str = "kind";

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkInfo {
    pub id: String,
    pub created_unix_s: i64,
    /// Containers attached now.
    pub containers: usize,
}

/// The network of this name, None when there is none.
pub async fn network(docker: &Docker, name: &str) -> anyhow::Result<Option<NetworkInfo>> {
    match docker.inspect_network(name, None).await {
        Ok(n) => {
            let created = n.created.unwrap_or_default();
            let created_unix_s = created
                .parse::<k8s_openapi::jiff::Timestamp>()
                .map(|t| t.as_second())
                .with_context(|| format!("network {name}: creation time {created:?}"))?;
            Ok(Some(NetworkInfo {
                id: n.id.unwrap_or_default(),
                created_unix_s,
                containers: n.containers.map_or(0, |c| c.len()),
            }))
        }
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("inspecting network {name}")),
    }
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
    // The classic builder on the containerd image store can lose a step's image to a garbage
    // collection that another client's image removal triggers mid-build ("unable to find image
    // sha256:..."); seen once in CI while tests removed images on the same engine. Once more
    // is enough: the build is small and deterministic.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let stream = docker.build_image(
            options.clone(),
            None,
            Some(bollard::body_full(context.clone().into())),
        );
        match drain_build(stream).await {
            Ok(()) => break,
            Err(e) if attempt == 1 && e.to_string().contains("unable to find image") => {
                eprintln!(
                    "  building {tag}: the engine lost an intermediate image ({e:#}); once more"
                );
            }
            Err(e) => return Err(e.context(format!("building image {tag}"))),
        }
    }
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

/// A complete static Linux program that exits 0 at once (one ELF64 header, one loadable segment,
/// three instructions): the smallest thing a `FROM scratch` container can run, so the doctor can
/// check that containers start without pulling or building anything. None off x86_64/aarch64.
pub fn exit0_program() -> Option<Vec<u8>> {
    const BASE: u64 = 0x40_0000;
    const HEADERS: u64 = 64 + 56;
    let (machine, code): (u16, &[u8]) = match std::env::consts::ARCH {
        // xor edi, edi; mov eax, 60 (exit); syscall
        "x86_64" => (62, &[0x31, 0xff, 0xb8, 0x3c, 0, 0, 0, 0x0f, 0x05]),
        // mov x0, #0; mov x8, #93 (exit); svc #0
        "aarch64" => (
            183,
            &[
                0x00, 0x00, 0x80, 0xd2, 0xa8, 0x0b, 0x80, 0xd2, 0x01, 0x00, 0x00, 0xd4,
            ],
        ),
        _ => return None,
    };
    let size = HEADERS + code.len() as u64;
    let mut elf = Vec::with_capacity(size as usize);
    // ELF header: 64-bit, little endian, version 1, System V ABI.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&machine.to_le_bytes());
    elf.extend_from_slice(&1u32.to_le_bytes()); // version
    elf.extend_from_slice(&(BASE + HEADERS).to_le_bytes()); // entry: the code after the headers
    elf.extend_from_slice(&64u64.to_le_bytes()); // program headers right after this header
    elf.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    elf.extend_from_slice(&0u32.to_le_bytes()); // flags
    for half in [64u16, 56, 1, 0, 0, 0] {
        // header size, program header size and count, section header size, count, names index
        elf.extend_from_slice(&half.to_le_bytes());
    }
    // One PT_LOAD segment, read + execute, mapping the whole file at BASE.
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&5u32.to_le_bytes());
    for word in [0, BASE, BASE, size, size, 0x1000u64] {
        elf.extend_from_slice(&word.to_le_bytes());
    }
    elf.extend_from_slice(code);
    Some(elf)
}

/// The label on the doctor's probe containers, so a leftover one can be told apart.
pub const PROBE_LABEL: &str = "iris-serve.dev/probe";

/// Starts a container of our own that exits 0 (the `exit0_program` in a scratch image, non-root,
/// no capabilities), on `network` ("none", or "bridge": what kind's nodes need), and removes it.
/// Err says why a container could not run here, as the engine said it.
pub async fn probe_container(docker: &Docker, network: &str) -> anyhow::Result<()> {
    use bollard::models::{ContainerCreateBody, HostConfig};
    use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
    let program = exit0_program().context("no probe program for this CPU architecture")?;
    let tag = "iris-serve-doctor/probe:1";
    if docker.inspect_image(tag).await.is_err() {
        let files = [ImageFile {
            path: "/probe".to_owned(),
            bytes: program,
            mode: 0o755,
        }];
        build_scratch_image(
            docker,
            tag,
            &files,
            "USER 65532:65532\nENTRYPOINT [\"/probe\"]\n",
            &HashMap::new(),
        )
        .await?;
    }
    let created = docker
        .create_container(
            None::<CreateContainerOptions>,
            ContainerCreateBody {
                image: Some(tag.to_owned()),
                labels: Some(HashMap::from([(
                    PROBE_LABEL.to_owned(),
                    "doctor".to_owned(),
                )])),
                host_config: Some(HostConfig {
                    network_mode: Some(network.to_owned()),
                    cap_drop: Some(vec!["ALL".to_owned()]),
                    readonly_rootfs: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .context("creating a container")?;
    let ran = async {
        docker
            .start_container(
                &created.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .context("starting a container")?;
        let mut waiting = docker.wait_container(
            &created.id,
            None::<bollard::query_parameters::WaitContainerOptions>,
        );
        while let Some(status) = waiting.next().await {
            status.context("waiting for a container")?;
        }
        anyhow::Ok(())
    }
    .await;
    let _ = docker
        .remove_container(
            &created.id,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
    ran
}

/// Removes the doctor's probe image.
pub async fn remove_probe_image(docker: &Docker) {
    let _ = docker
        .remove_image(
            "iris-serve-doctor/probe:1",
            Some(RemoveImageOptions {
                force: true,
                ..Default::default()
            }),
            None,
        )
        .await;
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

/// A container locked down as the project's pods are: read-only root file system, every
/// capability dropped, no new privileges (the image sets a non-root user).
pub fn locked_down() -> bollard::models::HostConfig {
    bollard::models::HostConfig {
        readonly_rootfs: Some(true),
        cap_drop: Some(vec!["ALL".to_owned()]),
        security_opt: Some(vec!["no-new-privileges".to_owned()]),
        ..Default::default()
    }
}

/// Removes a container (and its anonymous volumes) from a destructor or a panic path.
pub fn remove_container_blocking(docker: &Docker, id: &str) {
    let (docker, id) = (docker.clone(), id.to_owned());
    block_on_thread(async move {
        let options = bollard::query_parameters::RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        let _ = docker.remove_container(&id, Some(options)).await;
    });
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

/// Names the image `from` also `repo:tag` (the tag moves if another image had it).
pub async fn tag(
    docker: &Docker,
    from: &str,
    repo: &str,
    tag: &str,
) -> Result<(), bollard::errors::Error> {
    docker
        .tag_image(
            from,
            Some(bollard::query_parameters::TagImageOptions {
                repo: Some(repo.to_owned()),
                tag: Some(tag.to_owned()),
            }),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_program_runs_and_exits_0() {
        let Some(program) = exit0_program() else {
            eprintln!("\n*** SKIPPING: no probe program for this architecture ***\n");
            return;
        };
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("probe");
        std::fs::write(&path, &program).expect("write");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let status = std::process::Command::new(&path).status().expect("exec");
        assert!(status.success(), "{status:?}");
        assert!(program.len() < 200, "{} bytes", program.len());
    }

    #[tokio::test]
    async fn the_doctor_probe_runs_a_container_and_names_what_broke() {
        let engines = crate::testkit::node::engines_or_skip("doctor container probe").await;
        for (store, docker) in &engines {
            probe_container(docker, "none")
                .await
                .unwrap_or_else(|e| panic!("{store}: {e:#}"));
        }
        for (store, docker) in &engines {
            probe_container(docker, "bridge")
                .await
                .unwrap_or_else(|e| panic!("{store}, bridge: {e:#}"));
            // A container that cannot be started there is named with the engine's own reason.
            let err = probe_container(docker, "iris-no-such-network")
                .await
                .expect_err("no such network");
            assert!(
                format!("{err:#}").contains("iris-no-such-network"),
                "{store}: {err:#}"
            );
        }
        for (_, docker) in &engines {
            remove_probe_image(docker).await;
        }
    }

    #[tokio::test]
    async fn a_network_is_read_with_its_creation_time_and_containers() {
        let Some(docker) = crate::testkit::node::docker_or_skip("network inspect").await else {
            return;
        };
        let name = crate::testkit::node::unique("iris-net");
        assert_eq!(network(&docker, &name).await.expect("absent"), None);
        let before = crate::platform::clock::unix_now_s() as i64;
        docker
            .create_network(bollard::models::NetworkCreateRequest {
                name: name.clone(),
                ..Default::default()
            })
            .await
            .expect("create");
        let found = network(&docker, &name).await;
        let _ = docker.remove_network(&name).await;
        let found = found.expect("inspect").expect("present");
        assert!(
            (before - 1..=before + 5).contains(&found.created_unix_s),
            "{found:?}, created around {before}"
        );
        assert_eq!(found.containers, 0);
        assert_eq!(network(&docker, &name).await.expect("gone"), None);
    }
}
