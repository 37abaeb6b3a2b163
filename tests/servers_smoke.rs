//! Proves the test servers of `tests/common` work for real (run `tests/setup.sh` first).
mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::{Azurite, Postgres, S3Server, SoftHsm, CANARY_INSURANCE, CANARY_LAST_NAME};
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};

fn s3_store(s: &S3Server, secret: &str) -> impl ObjectStore {
    AmazonS3Builder::new()
        .with_endpoint(s.endpoint())
        .with_allow_http(true)
        .with_bucket_name(s.bucket())
        .with_access_key_id(s.access_key())
        .with_secret_access_key(secret)
        .with_region("us-east-1")
        .with_virtual_hosted_style_request(false)
        .build()
        .expect("build S3 store")
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect()
}

#[tokio::test]
async fn s3s_fs_put_get_conditional_multipart_and_auth() {
    let mut s3 = S3Server::start();
    assert!(s3.endpoint().starts_with("http://127.0.0.1:"));
    let store = s3_store(&s3, s3.secret_key());

    // put + get
    let p = ObjPath::from("smoke/hello.txt");
    store
        .put(&p, PutPayload::from_static(b"hello coffre"))
        .await
        .expect("put");
    let got = store
        .get(&p)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(&got[..], b"hello coffre");
    // the object is a plain file under root(): tests can corrupt or delete it there
    assert_eq!(
        fs::read(s3.root().join("smoke/hello.txt")).expect("object file"),
        b"hello coffre"
    );

    // PutMode::Create: first succeeds, second must fail with AlreadyExists and not overwrite
    let c = ObjPath::from("smoke/create-once");
    let create = || PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    store
        .put_opts(&c, PutPayload::from_static(b"first"), create())
        .await
        .expect("first create");
    let second = store
        .put_opts(&c, PutPayload::from_static(b"second"), create())
        .await;
    assert!(
        matches!(second, Err(object_store::Error::AlreadyExists { .. })),
        "second PutMode::Create must fail with AlreadyExists, got {second:?}"
    );
    let got = store.get(&c).await.unwrap().bytes().await.unwrap();
    assert_eq!(&got[..], b"first");

    // multipart upload: 12 MiB in 5 MiB parts (3 parts)
    let m = ObjPath::from("smoke/multipart.bin");
    let data = pattern(12 * 1024 * 1024 + 123);
    let upload = store.put_multipart(&m).await.expect("start multipart");
    let mut w = WriteMultipart::new_with_chunk_size(upload, 5 * 1024 * 1024);
    for chunk in data.chunks(1024 * 1024) {
        w.write(chunk);
    }
    w.finish().await.expect("finish multipart");
    let head = store.head(&m).await.expect("head multipart");
    assert_eq!(head.size, data.len() as u64);
    let got = store.get(&m).await.unwrap().bytes().await.unwrap();
    assert!(got[..] == data[..], "multipart object differs");

    // list sees the three objects
    let mut listed: Vec<String> = store
        .list(Some(&ObjPath::from("smoke")))
        .map_ok(|o| o.location.to_string())
        .try_collect()
        .await
        .unwrap();
    listed.sort();
    assert_eq!(
        listed,
        [
            "smoke/create-once",
            "smoke/hello.txt",
            "smoke/multipart.bin"
        ]
    );

    // wrong secret: s3s-fs checks SigV4, the put must fail and write nothing
    let bad = s3_store(&s3, "not-the-secret");
    let r = bad
        .put(
            &ObjPath::from("smoke/intruder"),
            PutPayload::from_static(b"x"),
        )
        .await;
    assert!(r.is_err(), "put with a wrong secret key must fail");
    assert!(!s3.root().join("smoke/intruder").exists());

    // deleting the file on disk is seen as NotFound
    fs::remove_file(s3.root().join("smoke/hello.txt")).unwrap();
    let r = store.get(&p).await;
    assert!(
        matches!(r, Err(object_store::Error::NotFound { .. })),
        "got {r:?}"
    );

    // restart: same port, same data
    let port = s3.port();
    s3.restart();
    assert_eq!(s3.port(), port);
    let store = s3
        .s3_builder()
        .build()
        .expect("build S3 store from the helper");
    let got = store
        .get(&c)
        .await
        .expect("get after restart")
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], b"first");

    // stop: the server is gone
    s3.stop();
    assert!(!s3.is_running());
    let r = store.get(&c).await;
    assert!(r.is_err(), "get from a stopped server must fail");
}

#[tokio::test]
async fn azurite_put_get_and_restart() {
    let mut az = Azurite::start();
    assert_eq!(
        az.endpoint(),
        format!("http://127.0.0.1:{}/devstoreaccount1", az.port())
    );
    // endpoint mode (per instance, no env var); the same as az.azure_builder()
    let build = |az: &Azurite| {
        MicrosoftAzureBuilder::new()
            .with_account(az.account())
            .with_access_key(az.access_key())
            .with_container_name(az.container())
            .with_endpoint(az.endpoint())
            .with_allow_http(true)
            .build()
            .expect("build Azure store")
    };
    let store = build(&az);
    let p = ObjPath::from("smoke/blob.bin");
    let data = pattern(3 * 1024 * 1024 + 7);
    store
        .put(&p, PutPayload::from(data.clone()))
        .await
        .expect("put (endpoint mode)");
    let got = store.get(&p).await.expect("get").bytes().await.unwrap();
    assert!(got[..] == data[..], "blob differs");

    // conditional create is honoured by Azurite too
    let create = || PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let r = store
        .put_opts(&p, PutPayload::from_static(b"again"), create())
        .await;
    assert!(
        matches!(r, Err(object_store::Error::AlreadyExists { .. })),
        "got {r:?}"
    );

    // emulator mode: object_store takes the URL only from this env var (process-wide).
    // std serialises its own env access; set it before building the store.
    std::env::set_var("AZURITE_BLOB_STORAGE_URL", az.blob_url());
    let emu = MicrosoftAzureBuilder::new()
        .with_use_emulator(true)
        .with_account(az.account())
        .with_access_key(az.access_key())
        .with_container_name(az.container())
        .build()
        .expect("build Azure store (emulator mode)");
    let got = emu
        .get(&p)
        .await
        .expect("get (emulator mode)")
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.len(), data.len());
    emu.put(
        &ObjPath::from("smoke/emu.txt"),
        PutPayload::from_static(b"emu"),
    )
    .await
    .expect("put (emulator mode)");

    // a wrong key is rejected
    let bad = MicrosoftAzureBuilder::new()
        .with_account(az.account())
        .with_access_key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .with_container_name(az.container())
        .with_endpoint(az.endpoint())
        .with_allow_http(true)
        .build()
        .unwrap();
    assert!(bad
        .put(
            &ObjPath::from("smoke/intruder"),
            PutPayload::from_static(b"x")
        )
        .await
        .is_err());

    // graceful restart keeps the blobs
    az.restart();
    let store = az
        .azure_builder()
        .build()
        .expect("build Azure store from the helper");
    let got = store
        .get(&ObjPath::from("smoke/emu.txt"))
        .await
        .expect("get after restart")
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], b"emu");
    let n = store
        .list(None)
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .len();
    assert_eq!(n, 2);

    az.stop();
    assert!(!az.is_running());
}

#[test]
fn softhsm_token_keygen_and_list() {
    let hsm = SoftHsm::init("coffre-smoke", "123456", "12345678");
    assert!(hsm.module_path().exists());
    let conf = fs::read_to_string(hsm.conf_path()).unwrap();
    assert!(conf.contains("directories.tokendir = "), "{conf}");
    assert_eq!(fs::read_to_string(hsm.pin_file()).unwrap(), "123456");
    assert_eq!(
        fs::metadata(hsm.pin_file()).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // empty token: listing works (logged in) and shows no key
    let before = hsm.list_objects();
    assert!(!before.contains("coffre-kek"), "{before}");
    // make an AES-256 key on the token, then it is listed
    hsm.pkcs11_tool(&[
        "--login",
        "--pin",
        hsm.user_pin(),
        "--keygen",
        "--key-type",
        "AES:32",
        "--label",
        "coffre-kek",
        "--id",
        "01",
    ]);
    let after = hsm.list_objects();
    assert!(after.contains("coffre-kek"), "key not listed:\n{after}");
    // the token lives in our private token dir
    assert!(fs::read_dir(hsm.token_dir()).unwrap().count() >= 1);

    // a second token in the same conf
    hsm.add_token("coffre-smoke-2", "654321", "87654321");
    let slots = std::process::Command::new("pkcs11-tool")
        .env(SoftHsm::CONF_ENV, hsm.conf_path())
        .arg("--module")
        .arg(hsm.module_path())
        .arg("--list-token-slots")
        .output()
        .unwrap();
    let slots = String::from_utf8_lossy(&slots.stdout);
    assert!(
        slots.contains("coffre-smoke") && slots.contains("coffre-smoke-2"),
        "{slots}"
    );
}

#[test]
fn postgres_emr_db_snapshots_restore() {
    let out = tempfile::tempdir().unwrap();
    let db = Postgres::make_emr_db(&out.path().join("emr"), 50);
    let counts = db.counts();
    let expect: std::collections::BTreeMap<String, u64> = [
        ("patients", 51),
        ("encounters", 100),
        ("lab_results", 1000),
        ("medications", 200),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(counts, expect);
    let sql = fs::read_to_string(&db.sql).unwrap();
    assert!(
        sql.contains(CANARY_LAST_NAME) && sql.contains(CANARY_INSURANCE),
        "canary missing from emr.sql"
    );
    assert!(
        fs::read(&db.dump).unwrap().starts_with(b"PGDMP"),
        "emr.dump is not a custom-format dump"
    );
    assert!(db.basebackup.join("PG_VERSION").exists());

    // the base backup is a usable PGDATA: start it and read the data back
    let from_bb = Postgres::start_from(&db.basebackup);
    assert_eq!(from_bb.emr_counts("emr"), expect);
    let canary = from_bb.psql(
        "emr",
        &format!("SELECT insurance_number FROM patients WHERE last_name = '{CANARY_LAST_NAME}'"),
    );
    assert_eq!(canary.trim(), CANARY_INSURANCE);
    drop(from_bb);

    // the custom dump restores into a fresh cluster with the same counts
    let mut fresh = Postgres::start();
    fresh.restore_dump(&db.dump, "restored");
    assert_eq!(fresh.emr_counts("restored"), expect);
    fresh.restore_sql(&db.sql, "restored_sql");
    assert_eq!(fresh.emr_counts("restored_sql"), expect);
    fresh.stop();
}
