//! The `pkcs11` key provider: epoch keys are AES-256 secret keys generated inside a PKCS#11 token
//! (an HSM; SoftHSM2 in tests), used through `cryptoki`. They never leave the token.
//!
//! Objects coffre keeps on the token (all CKA_TOKEN = true, CKA_PRIVATE = true):
//! - epoch key, CKA_LABEL `coffre-epoch-<epoch>`: CKO_SECRET_KEY / CKK_AES, 32 bytes, made by
//!   C_GenerateKey (CKM_AES_KEY_GEN) with CKA_SENSITIVE = true, CKA_EXTRACTABLE = false,
//!   CKA_WRAP = CKA_UNWRAP = true and every other usage (encrypt, decrypt, sign, verify, derive)
//!   false. CKA_ID holds its creation time (RFC 3339, ASCII), CKA_START_DATE its creation day;
//! - tombstone, CKA_LABEL `coffre-tombstone-<epoch>`: CKO_DATA whose CKA_VALUE is the RFC 3339
//!   time of the destruction (CKA_APPLICATION also names when the key was created). No key
//!   material.
//!
//! Mechanism: CKM_AES_KEY_WRAP_PAD (RFC 5649), the wrapped format of the file provider (40 bytes
//! for a 32-byte DEK). To wrap, the DEK is imported as a temporary session object (CKA_TOKEN =
//! false, CKA_SENSITIVE = true, CKA_EXTRACTABLE = true) and C_WrapKey'd under the epoch key; to
//! unwrap, C_UnwrapKey makes a temporary session object (CKA_SENSITIVE = false, CKA_EXTRACTABLE =
//! true) whose CKA_VALUE is read into a zeroizing buffer. Both temporary objects are destroyed at
//! once, on success and on failure (and vanish anyway with the session). Chosen over CKM_AES_GCM
//! because it is the standard key-wrapping mechanism, SoftHSM2 supports it through
//! C_WrapKey/C_UnwrapKey (not C_Encrypt), and the epoch key then needs no CKA_ENCRYPT/DECRYPT: it
//! can wrap and unwrap keys and do nothing else. An altered wrapped key, or one wrapped under
//! another key, comes back from SoftHSM as CKR_GENERAL_ERROR (or CKR_WRAPPED_KEY_INVALID, ...
//! on other tokens): those are mapped to [`KeyError::UnwrapFailed`].
//!
//! Invariants:
//! - the epoch key can neither be read (C_GetAttributeValue(CKA_VALUE) is refused: sensitive) nor
//!   wrapped out (not extractable); the token enforces both, coffre only asks;
//! - a tombstone wins over a key: an epoch with a tombstone refuses ensure, wrap and unwrap with
//!   [`KeyError::KeyDestroyed`]. `destroy` writes the tombstone first, then C_DestroyObject on
//!   every object with the epoch's label, then checks that none is left: a crash in between
//!   leaves an epoch that is already refused, and whose key the next `destroy` or
//!   `ensure_epoch` removes;
//! - the session is checked (C_GetSessionInfo: open and logged in as user) before every operation:
//!   a closed or logged-out session is reopened and logged in again (the slot is found again by
//!   token label), and an operation that fails with a session error is retried once. A
//!   logged-out session would otherwise simply not see the private objects;
//! - a wrong PIN (CKR_PIN_INCORRECT, CKR_PIN_LOCKED, ...) is [`KeyError::MasterKey`] (not
//!   retryable, names the PIN file) while a missing module, token or device is
//!   [`KeyError::Unavailable`] (retryable);
//! - a module is loaded and C_Initialize'd once per process and path, and never finalized:
//!   PKCS#11 state is per process, so several providers on one module share it (and, per token,
//!   the login state).
//!
//! Honest limits: the DEK passes in clear through the PKCS#11 library's memory (for a network
//! HSM, through its client channel) while it is wrapped or unwrapped; cryptoki's
//! C_GetAttributeValue helper frees a temporary copy of the unwrapped value without zeroizing it.
//! Two processes creating the same epoch at the same instant may make two keys with one label:
//! wraps use the oldest, unwraps try each, `destroy` removes all. Tombstones are never removed
//! (one small object per destroyed epoch).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::{AuthPin, Date, Ulong};
use zeroize::{Zeroize, Zeroizing};

use super::{DataKey, EpochInfo, KeyError, KeyProvider};
use crate::config::{secret_file_problem, Config, KeyProviderConfig};
use crate::ids::{EpochId, SnapshotId};

const EPOCH_PREFIX: &str = "coffre-epoch-";
const TOMBSTONE_PREFIX: &str = "coffre-tombstone-";
const CREATED_TAG: &str = "coffre; epoch key created ";
const DEK_LEN: usize = 32;
/// RFC 5649 output for a 32-byte key: 8-byte integrity block + 32 bytes.
const WRAPPED_LEN: usize = 40;

pub struct Pkcs11Provider {
    name: String,
    module: PathBuf,
    token_label: String,
    pin_file: PathBuf,
    pin: AuthPin,
    ctx: Pkcs11,
    /// `None` after a session was found broken and could not be reopened yet.
    session: Mutex<Option<Session>>,
    /// This host's label namespace (empty, or `<host>/`): [`epoch_label`].
    label_ns: Mutex<String>,
}

/// Failure inside one session operation: a raw PKCS#11 error (mapped, and retried once after a
/// session error, by [`Pkcs11Provider::with_session`]) or an error already in coffre's terms.
enum Fail {
    Hsm(CkError),
    Key(KeyError),
}

impl From<CkError> for Fail {
    fn from(e: CkError) -> Fail {
        Fail::Hsm(e)
    }
}

impl From<KeyError> for Fail {
    fn from(e: KeyError) -> Fail {
        Fail::Key(e)
    }
}

/// An epoch key on the token.
struct EpochKey {
    handle: ObjectHandle,
    /// RFC 3339 creation time (from CKA_ID), or "unknown".
    created: String,
}

/// A template holding secret bytes in CKA_VALUE: zeroized on drop, also on error paths.
struct SecretTemplate(Vec<Attribute>);

impl Drop for SecretTemplate {
    fn drop(&mut self) {
        for a in self.0.iter_mut() {
            if let Attribute::Value(v) = a {
                v.zeroize();
            }
        }
    }
}

fn now() -> String {
    crate::clock::now_rfc3339()
}

/// An epoch key's label: `coffre-epoch-<ns><epoch>`, where `ns` is empty for the host that
/// owns its stores' roots (the labels coffre always wrote) and `<host>/` for every other host
/// (src/store/namespace.rs), so that hosts sharing a token never find, wrap with or destroy
/// each other's keys. An epoch id has no `/`: the namespaces never meet.
fn epoch_label(ns: &str, epoch: &EpochId) -> Vec<u8> {
    format!("{EPOCH_PREFIX}{ns}{epoch}").into_bytes()
}

fn tombstone_label(ns: &str, epoch: &EpochId) -> Vec<u8> {
    format!("{TOMBSTONE_PREFIX}{ns}{epoch}").into_bytes()
}

/// `CKR_PIN_INCORRECT` from `RvError::PinIncorrect`.
fn ckr(rv: &RvError) -> String {
    let debug = format!("{rv:?}");
    if debug.contains('(') {
        return format!("CKR {debug}");
    }
    let mut out = String::from("CKR");
    for c in debug.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// A PKCS#11 error in one line: `C_Login returned CKR_PIN_INCORRECT`.
fn describe(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, f) => format!("C_{f:?} returned {}", ckr(rv)),
        other => other.to_string(),
    }
}

/// Errors after which the session (or the whole token connection) must be reopened.
fn is_session_error(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::UserNotLoggedIn
                | RvError::CryptokiNotInitialized,
            _
        )
    )
}

/// Errors C_UnwrapKey returns for a wrapped key that does not unwrap under the given key
/// (SoftHSM2: CKR_GENERAL_ERROR).
fn is_bad_wrapped_key(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::GeneralError
                | RvError::FunctionFailed
                | RvError::WrappedKeyInvalid
                | RvError::WrappedKeyLenRange
                | RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::DataInvalid
                | RvError::DataLenRange,
            _
        )
    )
}

fn initialize(ctx: &Pkcs11) -> Result<(), CkError> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Load and initialise a PKCS#11 module once per process (C_Initialize is per process).
fn load_module(provider: &str, path: &Path) -> Result<Pkcs11, KeyError> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let unavailable = |reason: String| KeyError::Unavailable {
        provider: provider.to_string(),
        reason,
    };
    if !path.is_file() {
        return Err(unavailable(format!(
            "the PKCS#11 module {} does not exist: the HSM is unavailable. Install the HSM's PKCS#11 library (SoftHSM2: `apt-get install softhsm2`) or fix `module`",
            path.display()
        )));
    }
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(ctx) = modules.get(&canonical) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(&canonical).map_err(|e| {
        unavailable(format!(
            "cannot load the PKCS#11 module {}: {}",
            path.display(),
            describe(&e)
        ))
    })?;
    initialize(&ctx).map_err(|e| {
        unavailable(format!(
            "the PKCS#11 module {} does not initialise: {}",
            path.display(),
            describe(&e)
        ))
    })?;
    modules.insert(canonical, ctx.clone());
    Ok(ctx)
}

/// Read the user PIN: refuse a file readable by group or others, trim, refuse an empty PIN.
fn read_pin(provider: &str, path: &Path) -> Result<AuthPin, KeyError> {
    let err = |reason: String| KeyError::MasterKey {
        provider: provider.to_string(),
        reason,
    };
    if let Some(problem) = secret_file_problem(path) {
        return Err(err(problem));
    }
    let text = Zeroizing::new(std::fs::read(path).map_err(|e| {
        err(format!(
            "cannot read the PIN file {}: {e}. Put the token's user PIN in it (mode 0600)",
            path.display()
        ))
    })?);
    let pin = std::str::from_utf8(&text)
        .map_err(|_| err(format!("the PIN file {} is not UTF-8 text", path.display())))?
        .trim();
    if pin.is_empty() {
        return Err(err(format!(
            "the PIN file {} is empty: put the token's user PIN in it",
            path.display()
        )));
    }
    Ok(AuthPin::from(pin))
}

fn today() -> Result<Date, CkError> {
    let d = time::OffsetDateTime::now_utc().date();
    Date::new_from_str_slice(
        &format!("{:04}", d.year()),
        &format!("{:02}", u8::from(d.month())),
        &format!("{:02}", d.day()),
    )
}

impl Pkcs11Provider {
    /// Load the module, find the token by label, read the PIN, open a R/W session, log in.
    pub fn open(_config: &Config, k: &KeyProviderConfig) -> Result<Pkcs11Provider, KeyError> {
        let missing = |what: &str| KeyError::Unavailable {
            provider: k.name.clone(),
            reason: format!("a pkcs11 provider needs `{what}` in its config"),
        };
        let module = k.module.clone().ok_or_else(|| missing("module"))?;
        let token_label = k
            .token_label
            .clone()
            .ok_or_else(|| missing("token-label"))?;
        let pin_file = k.pin_file.clone().ok_or_else(|| missing("pin-file"))?;
        let pin = read_pin(&k.name, &pin_file)?;
        let ctx = load_module(&k.name, &module)?;
        let p = Pkcs11Provider {
            name: k.name.clone(),
            module,
            token_label,
            pin_file,
            pin,
            ctx,
            session: Mutex::new(None),
            label_ns: Mutex::new(String::new()),
        };
        let session = p.open_session()?;
        *p.lock() = Some(session);
        Ok(p)
    }

    fn ns(&self) -> String {
        self.label_ns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn lock(&self) -> MutexGuard<'_, Option<Session>> {
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unavailable(&self, what: &str, e: &CkError) -> KeyError {
        KeyError::Unavailable {
            provider: self.name.clone(),
            reason: format!(
                "{what} on token `{}` ({}): {}",
                self.token_label,
                self.module.display(),
                describe(e)
            ),
        }
    }

    fn destroyed(&self, epoch: &EpochId, at: Option<String>) -> KeyError {
        KeyError::KeyDestroyed {
            provider: self.name.clone(),
            epoch: epoch.clone(),
            at,
        }
    }

    /// The slot holding the token labelled `token-label`; a clear error listing the labels seen.
    fn find_slot(&self) -> Result<Slot, KeyError> {
        let slots = match self.ctx.get_slots_with_initialized_token() {
            Err(CkError::Pkcs11(RvError::CryptokiNotInitialized, _)) => {
                // Someone called C_Finalize in this process: initialise again.
                initialize(&self.ctx)
                    .and_then(|_| self.ctx.get_slots_with_initialized_token())
                    .map_err(|e| self.unavailable("cannot list the slots", &e))?
            }
            r => r.map_err(|e| self.unavailable("cannot list the slots", &e))?,
        };
        let mut labels = Vec::new();
        let mut found = Vec::new();
        for slot in slots {
            let Ok(info) = self.ctx.get_token_info(slot) else {
                continue;
            };
            let label = info.label().trim().to_string();
            if label == self.token_label {
                found.push(slot);
            }
            labels.push(format!("`{label}`"));
        }
        match found.as_slice() {
            [slot] => Ok(*slot),
            [] => Err(KeyError::Unavailable {
                provider: self.name.clone(),
                reason: format!(
                    "no token labelled `{}` in PKCS#11 module {} (tokens found: {}): the HSM is unavailable, or `token-label` is wrong",
                    self.token_label,
                    self.module.display(),
                    if labels.is_empty() { "none".to_string() } else { labels.join(", ") }
                ),
            }),
            many => Err(KeyError::Unavailable {
                provider: self.name.clone(),
                reason: format!(
                    "{} tokens are labelled `{}` in PKCS#11 module {}: coffre will not guess which holds the epoch keys; give each token a distinct label",
                    many.len(),
                    self.token_label,
                    self.module.display()
                ),
            }),
        }
    }

    /// Open a R/W session on the token and log in as user.
    fn open_session(&self) -> Result<Session, KeyError> {
        let slot = self.find_slot()?;
        let session = self
            .ctx
            .open_rw_session(slot)
            .map_err(|e| self.unavailable("cannot open a session", &e))?;
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => Err(KeyError::MasterKey {
                provider: self.name.clone(),
                reason: format!(
                    "the PIN in {} is wrong for token `{}` (CKR_PIN_INCORRECT): put the token's user PIN in it (repeated wrong PINs may lock the token)",
                    self.pin_file.display(),
                    self.token_label
                ),
            }),
            Err(CkError::Pkcs11(
                rv @ (RvError::PinLocked
                | RvError::PinExpired
                | RvError::PinInvalid
                | RvError::PinLenRange
                | RvError::UserPinNotInitialized),
                _,
            )) => Err(KeyError::MasterKey {
                provider: self.name.clone(),
                reason: format!(
                    "the user PIN of token `{}` (from {}) cannot be used ({}): the token's security officer must reset or initialise it",
                    self.token_label,
                    self.pin_file.display(),
                    ckr(&rv)
                ),
            }),
            Err(e) => Err(self.unavailable("cannot log in", &e)),
        }
    }

    /// Run `f` on a session that is open and logged in as user; reopen it (and retry `f` once)
    /// after a session error.
    fn with_session<T>(&self, f: impl Fn(&Session) -> Result<T, Fail>) -> Result<T, KeyError> {
        let mut guard = self.lock();
        let mut retried = false;
        loop {
            let session = match guard.take() {
                Some(s)
                    if matches!(
                        s.get_session_info().map(|i| i.session_state()),
                        Ok(SessionState::RwUser)
                    ) =>
                {
                    s
                }
                stale => {
                    if stale.is_some() {
                        tracing::info!(provider = %self.name, "PKCS#11 session closed or logged out: reopening it");
                    }
                    drop(stale);
                    self.open_session()?
                }
            };
            match f(&session) {
                Ok(v) => {
                    *guard = Some(session);
                    return Ok(v);
                }
                Err(Fail::Key(e)) => {
                    *guard = Some(session);
                    return Err(e);
                }
                Err(Fail::Hsm(e)) if is_session_error(&e) && !retried => {
                    tracing::warn!(provider = %self.name, error = %describe(&e), "PKCS#11 session error: reopening the session and retrying once");
                    retried = true;
                    drop(session);
                }
                Err(Fail::Hsm(e)) => {
                    if !is_session_error(&e) {
                        *guard = Some(session);
                    }
                    return Err(self.unavailable("operation failed", &e));
                }
            }
        }
    }

    /// The destruction time recorded by the epoch's tombstone, if there is one.
    fn tombstone(&self, s: &Session, epoch: &EpochId) -> Result<Option<Option<String>>, Fail> {
        let found = s.find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Label(tombstone_label(&self.ns(), epoch)),
        ])?;
        let Some(h) = found.first() else {
            return Ok(None);
        };
        let at = s
            .get_attributes(*h, &[AttributeType::Value])?
            .into_iter()
            .find_map(|a| match a {
                Attribute::Value(v) => String::from_utf8(v).ok(),
                _ => None,
            });
        Ok(Some(at))
    }

    /// The epoch's keys on the token, oldest first.
    fn epoch_keys(&self, s: &Session, epoch: &EpochId) -> Result<Vec<EpochKey>, Fail> {
        let mut keys = Vec::new();
        for handle in s.find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(epoch_label(&self.ns(), epoch)),
        ])? {
            let created = s
                .get_attributes(handle, &[AttributeType::Id])?
                .into_iter()
                .find_map(|a| match a {
                    Attribute::Id(v) => String::from_utf8(v).ok(),
                    _ => None,
                })
                .unwrap_or_else(|| "unknown".into());
            keys.push(EpochKey { handle, created });
        }
        keys.sort_by(|a, b| (&a.created, a.handle.handle()).cmp(&(&b.created, b.handle.handle())));
        Ok(keys)
    }

    /// The keys that may wrap or unwrap under `epoch`: refused when destroyed or unknown.
    fn usable_keys(&self, s: &Session, epoch: &EpochId) -> Result<Vec<EpochKey>, Fail> {
        if let Some(at) = self.tombstone(s, epoch)? {
            return Err(self.destroyed(epoch, at).into());
        }
        let keys = self.epoch_keys(s, epoch)?;
        if keys.is_empty() {
            return Err(KeyError::UnknownEpoch {
                provider: self.name.clone(),
                epoch: epoch.clone(),
            }
            .into());
        }
        Ok(keys)
    }

    /// C_DestroyObject on every object labelled with the epoch's label.
    fn destroy_key_objects(&self, s: &Session, epoch: &EpochId) -> Result<usize, Fail> {
        let found = s.find_objects(&[Attribute::Label(epoch_label(&self.ns(), epoch))])?;
        for h in &found {
            s.destroy_object(*h)?;
        }
        Ok(found.len())
    }

    fn destroy_temporary(&self, s: &Session, h: ObjectHandle) {
        if let Err(e) = s.destroy_object(h) {
            tracing::warn!(provider = %self.name, error = %describe(&e), "cannot destroy a temporary session key object (it goes away with the session)");
        }
    }

    /// Unwrap under one key; `Fail::Key(UnwrapFailed)` when the blob does not unwrap under it.
    fn unwrap_one(
        &self,
        s: &Session,
        kek: ObjectHandle,
        wrapped: &[u8],
        fail: &dyn Fn() -> KeyError,
    ) -> Result<DataKey, Fail> {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::Encrypt(false),
            Attribute::Decrypt(false),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Derive(false),
        ];
        let h = match s.unwrap_key(&Mechanism::AesKeyWrapPad, kek, wrapped, &template) {
            Ok(h) => h,
            Err(e) if is_bad_wrapped_key(&e) => return Err(fail().into()),
            Err(e) => return Err(e.into()),
        };
        let attrs = s.get_attributes(h, &[AttributeType::Value]);
        self.destroy_temporary(s, h);
        let mut value = None;
        for a in attrs? {
            if let Attribute::Value(v) = a {
                value = Some(Zeroizing::new(v));
            }
        }
        let value = value.ok_or_else(|| KeyError::Unavailable {
            provider: self.name.clone(),
            reason: "the token does not return the value of an unwrapped data key".into(),
        })?;
        if value.len() != DEK_LEN {
            return Err(fail().into());
        }
        let mut dek = Zeroizing::new([0u8; DEK_LEN]);
        dek.copy_from_slice(&value);
        Ok(DataKey::from_bytes(*dek))
    }
}

impl KeyProvider for Pkcs11Provider {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "pkcs11"
    }
    fn algorithm(&self) -> &'static str {
        "aes256-kwp-pkcs11"
    }

    fn ensure_epoch(&self, epoch: &EpochId) -> Result<(), KeyError> {
        self.with_session(|s| {
            if let Some(at) = self.tombstone(s, epoch)? {
                // Finish a destruction that was interrupted after its tombstone was written.
                if let Err(Fail::Hsm(e)) = self.destroy_key_objects(s, epoch) {
                    tracing::warn!(provider = %self.name, %epoch, error = %describe(&e), "cannot remove the key of a destroyed epoch yet");
                }
                return Err(self.destroyed(epoch, at).into());
            }
            if !self.epoch_keys(s, epoch)?.is_empty() {
                return Ok(());
            }
            let created = now();
            let template = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(Ulong::try_from(DEK_LEN)?),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Wrap(true),
                Attribute::Unwrap(true),
                Attribute::Encrypt(false),
                Attribute::Decrypt(false),
                Attribute::Sign(false),
                Attribute::Verify(false),
                Attribute::Derive(false),
                Attribute::Label(epoch_label(&self.ns(), epoch)),
                Attribute::Id(created.clone().into_bytes()),
                Attribute::StartDate(today()?),
            ];
            s.generate_key(&Mechanism::AesKeyGen, &template)?;
            tracing::info!(provider = %self.name, %epoch, token = %self.token_label, "created epoch key on the token");
            Ok(())
        })
    }

    fn wrap(
        &self,
        epoch: &EpochId,
        dek: &DataKey,
        _snapshot: &SnapshotId,
    ) -> Result<Vec<u8>, KeyError> {
        self.with_session(|s| {
            let keys = self.usable_keys(s, epoch)?;
            let Some(kek) = keys.first() else {
                return Err(KeyError::UnknownEpoch {
                    provider: self.name.clone(),
                    epoch: epoch.clone(),
                }
                .into());
            };
            let template = SecretTemplate(vec![
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(false),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(true),
                Attribute::Encrypt(false),
                Attribute::Decrypt(false),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
                Attribute::Sign(false),
                Attribute::Verify(false),
                Attribute::Derive(false),
                Attribute::Value(dek.expose().to_vec()),
            ]);
            let tmp = s.create_object(&template.0)?;
            drop(template);
            let wrapped = s.wrap_key(&Mechanism::AesKeyWrapPad, kek.handle, tmp);
            self.destroy_temporary(s, tmp);
            let wrapped = wrapped?;
            if wrapped.len() != WRAPPED_LEN {
                return Err(KeyError::Unavailable {
                    provider: self.name.clone(),
                    reason: format!(
                        "the token wrapped a {DEK_LEN}-byte key into {} bytes, not {WRAPPED_LEN}: CKM_AES_KEY_WRAP_PAD is not implemented as RFC 5649",
                        wrapped.len()
                    ),
                }
                .into());
            }
            Ok(wrapped)
        })
    }

    fn unwrap(
        &self,
        epoch: &EpochId,
        wrapped: &[u8],
        snapshot: &SnapshotId,
    ) -> Result<DataKey, KeyError> {
        let fail = || KeyError::UnwrapFailed {
            provider: self.name.clone(),
            epoch: epoch.clone(),
            snapshot: snapshot.to_string(),
        };
        self.with_session(|s| {
            let keys = self.usable_keys(s, epoch)?;
            if wrapped.len() != WRAPPED_LEN {
                return Err(fail().into());
            }
            for kek in &keys {
                match self.unwrap_one(s, kek.handle, wrapped, &fail) {
                    Err(Fail::Key(KeyError::UnwrapFailed { .. })) => continue,
                    r => return r,
                }
            }
            Err(fail().into())
        })
    }

    fn destroy(&self, epoch: &EpochId) -> Result<(), KeyError> {
        self.with_session(|s| {
            if self.tombstone(s, epoch)?.is_none() {
                let created = self
                    .epoch_keys(s, epoch)?
                    .first()
                    .map(|k| k.created.clone())
                    .unwrap_or_else(|| "unknown".into());
                s.create_object(&[
                    Attribute::Class(ObjectClass::DATA),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Label(tombstone_label(&self.ns(), epoch)),
                    Attribute::Application(format!("{CREATED_TAG}{created}").into_bytes()),
                    Attribute::Value(now().into_bytes()),
                ])?;
            }
            let n = self.destroy_key_objects(s, epoch)?;
            let left = s.find_objects(&[Attribute::Label(epoch_label(&self.ns(), epoch))])?;
            if !left.is_empty() {
                return Err(KeyError::Unavailable {
                    provider: self.name.clone(),
                    reason: format!(
                        "{} object(s) labelled `{EPOCH_PREFIX}{}{epoch}` are still on token `{}` after C_DestroyObject",
                        left.len(),
                        self.ns(),
                        self.token_label
                    ),
                }
                .into());
            }
            if n > 0 {
                tracing::info!(provider = %self.name, %epoch, token = %self.token_label, objects = n, "destroyed epoch key on the token");
            }
            Ok(())
        })
    }

    fn epochs(&self) -> Result<Vec<EpochInfo>, KeyError> {
        self.with_session(|s| {
            let mut out: BTreeMap<EpochId, EpochInfo> = BTreeMap::new();
            let (epoch_prefix, tombstone_prefix) = (
                format!("{EPOCH_PREFIX}{}", self.ns()),
                format!("{TOMBSTONE_PREFIX}{}", self.ns()),
            );
            let epoch_of = |label: &[u8], prefix: &str| -> Option<EpochId> {
                let label = std::str::from_utf8(label).ok()?;
                EpochId::try_from(label.strip_prefix(prefix)?.to_string()).ok()
            };
            for h in s.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])? {
                let mut epoch = None;
                let mut created = "unknown".to_string();
                for a in s.get_attributes(h, &[AttributeType::Label, AttributeType::Id])? {
                    match a {
                        Attribute::Label(l) => epoch = epoch_of(&l, &epoch_prefix),
                        Attribute::Id(id) => {
                            if let Ok(t) = String::from_utf8(id) {
                                created = t;
                            }
                        }
                        _ => {}
                    }
                }
                let Some(epoch) = epoch else { continue };
                let e = out.entry(epoch.clone()).or_insert_with(|| EpochInfo {
                    epoch,
                    created: created.clone(),
                    destroyed: None,
                });
                if e.created == "unknown" || (created != "unknown" && created < e.created) {
                    e.created = created;
                }
            }
            for h in s.find_objects(&[Attribute::Class(ObjectClass::DATA)])? {
                // Label first: other applications' data objects may be large.
                let epoch = s
                    .get_attributes(h, &[AttributeType::Label])?
                    .into_iter()
                    .find_map(|a| match a {
                        Attribute::Label(l) => epoch_of(&l, &tombstone_prefix),
                        _ => None,
                    });
                let Some(epoch) = epoch else { continue };
                let mut at = None;
                let mut created = None;
                for a in s.get_attributes(h, &[AttributeType::Value, AttributeType::Application])? {
                    match a {
                        Attribute::Value(v) => at = String::from_utf8(v).ok(),
                        Attribute::Application(v) => {
                            created = String::from_utf8(v)
                                .ok()
                                .and_then(|t| t.strip_prefix(CREATED_TAG).map(str::to_string))
                        }
                        _ => {}
                    }
                }
                let e = out.entry(epoch.clone()).or_insert_with(|| EpochInfo {
                    epoch,
                    created: created.unwrap_or_else(|| "unknown".into()),
                    destroyed: None,
                });
                e.destroyed = Some(at.unwrap_or_else(|| "unknown".into()));
            }
            Ok(out.into_values().collect())
        })
    }

    fn set_label_namespace(&self, ns: &str) {
        *self.label_ns.lock().unwrap_or_else(|e| e.into_inner()) = ns.to_string();
    }

    fn health(&self) -> Result<(), KeyError> {
        self.with_session(|s| {
            s.get_session_info()?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SoftHSM's file token store is shared by every test in this process; one test at a time
    /// (concurrent slot listing while another test writes a token fails with CKR_GENERAL_ERROR).
    fn serial() -> std::sync::MutexGuard<'static, ()> {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }
    use std::os::unix::fs::OpenOptionsExt;
    use std::process::Command;

    const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
    const USER_PIN: &str = "5678";
    const SO_PIN: &str = "1234";
    /// One token per test: SoftHSM reads SOFTHSM2_CONF once per process, and an initialised
    /// module does not see tokens made later by softhsm2-util, so all are made up front.
    const TOKENS: &[&str] = &[
        "roundtrip",
        "wrongpin",
        "destroy",
        "tamper",
        "sensitive",
        "listing",
        "relogin",
        "epochs",
        "fleet",
        "races",
        "kwp",
    ];

    struct TestHsm {
        dir: PathBuf,
        conf: PathBuf,
    }

    fn module() -> PathBuf {
        [
            MODULE,
            "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
            "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
            "/usr/local/lib/softhsm/libsofthsm2.so",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("libsofthsm2.so not found: run tests/setup.sh")
    }

    /// The process-wide SoftHSM conf and token dir, with every test's token, made once.
    fn hsm() -> &'static TestHsm {
        static HSM: OnceLock<TestHsm> = OnceLock::new();
        HSM.get_or_init(|| {
            // The dir outlives the process (statics are not dropped): remove those of
            // test processes that are gone.
            const PREFIX: &str = "coffre-pkcs11-unit-";
            for entry in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix(PREFIX) {
                    if !Path::new("/proc").join(pid).exists() {
                        let _ = std::fs::remove_dir_all(entry.path());
                    }
                }
            }
            let dir = std::env::temp_dir().join(format!("{PREFIX}{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let tokens = dir.join("tokens");
            std::fs::create_dir_all(&tokens).unwrap();
            let conf = dir.join("softhsm2.conf");
            std::fs::write(
                &conf,
                format!(
                    "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                    tokens.display()
                ),
            )
            .unwrap();
            for label in TOKENS {
                let out = Command::new("softhsm2-util")
                    .env("SOFTHSM2_CONF", &conf)
                    .args(["--init-token", "--free", "--label", label])
                    .args(["--so-pin", SO_PIN, "--pin", USER_PIN])
                    .output()
                    .expect("softhsm2-util not found: run tests/setup.sh");
                assert!(
                    out.status.success(),
                    "softhsm2-util --init-token {label}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            // Before the first C_Initialize of this process (edition 2021: set_var is safe).
            std::env::set_var("SOFTHSM2_CONF", &conf);
            TestHsm { dir, conf }
        })
    }

    fn write_pin(path: &Path, pin: &str, mode: u32) {
        let _ = std::fs::remove_file(path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .unwrap();
        std::io::Write::write_all(&mut f, format!("{pin}\n").as_bytes()).unwrap();
    }

    /// Config and provider config for `label`, with the right PIN in a 0600 pin file.
    fn config(label: &str) -> (Config, KeyProviderConfig) {
        let h = hsm();
        let d = h.dir.join(format!("t-{label}"));
        std::fs::create_dir_all(&d).unwrap();
        let pin_file = d.join("user.pin");
        write_pin(&pin_file, USER_PIN, 0o600);
        let text = format!(
            r#"
state-dir = "{d}/state"
[replication]
min-sites = 1
[[store]]
name = "a"
kind = "local"
site = "x"
jurisdiction = "CA-QC"
path = "{d}/store"
[[key-provider]]
name = "hsm"
kind = "pkcs11"
module = "{m}"
token-label = "{label}"
pin-file = "{p}"
"#,
            d = d.display(),
            m = module().display(),
            p = pin_file.display(),
        );
        let c = Config::from_toml(&text, Path::new("t")).unwrap();
        let k = c.key_providers[0].clone();
        (c, k)
    }

    fn open(label: &str) -> Pkcs11Provider {
        let (c, k) = config(label);
        Pkcs11Provider::open(&c, &k).unwrap()
    }

    fn err<T>(r: Result<T, KeyError>) -> KeyError {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    fn epoch(s: &str) -> EpochId {
        EpochId::try_from(s.to_string()).unwrap()
    }

    fn pkcs11_tool_objects(label: &str) -> String {
        let out = Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", &hsm().conf)
            .arg("--module")
            .arg(module())
            .args(["--token-label", label, "--login", "--pin", USER_PIN])
            .arg("--list-objects")
            .output()
            .expect("pkcs11-tool not found: run tests/setup.sh");
        assert!(
            out.status.success(),
            "pkcs11-tool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn wrap_unwrap_round_trip() {
        let _serial = serial();
        let p = open("roundtrip");
        assert_eq!(p.kind(), "pkcs11");
        assert_eq!(p.algorithm(), "aes256-kwp-pkcs11");
        p.health().unwrap();
        let e = epoch("2026-12-28.1");
        let id = SnapshotId::new();
        assert!(matches!(
            err(p.wrap(&e, &DataKey::generate(), &id)),
            KeyError::UnknownEpoch { .. }
        ));
        p.ensure_epoch(&e).unwrap();
        p.ensure_epoch(&e).unwrap(); // idempotent: still one key
        let dek = DataKey::generate();
        let w = p.wrap(&e, &dek, &id).unwrap();
        assert_eq!(w.len(), WRAPPED_LEN);
        assert_eq!(p.unwrap(&e, &w, &id).unwrap().expose(), dek.expose());
        // Another provider instance (a new session) unwraps it too.
        let p2 = open("roundtrip");
        assert_eq!(p2.unwrap(&e, &w, &id).unwrap().expose(), dek.expose());
        // Fresh wraps of the same DEK are deterministic under KWP; different DEKs differ.
        let w2 = p.wrap(&e, &DataKey::generate(), &id).unwrap();
        assert_ne!(w, w2);
        // No temporary key objects are left behind, and one epoch key exists.
        let keys = p
            .with_session(|s| Ok(s.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])?))
            .unwrap();
        assert_eq!(keys.len(), 1);
        let epochs = p.epochs().unwrap();
        assert_eq!(epochs.len(), 1);
        assert_eq!(epochs[0].epoch, e);
        assert!(epochs[0].destroyed.is_none());
        assert!(epochs[0].created.starts_with("20"), "{:?}", epochs[0]);
        // Unknown epoch on unwrap.
        assert!(matches!(
            err(p.unwrap(&epoch("2027-01-01.1"), &w, &id)),
            KeyError::UnknownEpoch { .. }
        ));
    }

    #[test]
    fn wrong_pin_is_distinct_from_unavailable() {
        let _serial = serial();
        let (c, k) = config("wrongpin");
        let pin_file = k.pin_file.clone().unwrap();
        write_pin(&pin_file, "0000", 0o600);
        let e = err(Pkcs11Provider::open(&c, &k));
        assert!(matches!(e, KeyError::MasterKey { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("PIN") && msg.contains("CKR_PIN_INCORRECT"),
            "{msg}"
        );
        // Readable by group: refused before any login attempt.
        write_pin(&pin_file, USER_PIN, 0o640);
        let msg = err(Pkcs11Provider::open(&c, &k)).to_string();
        assert!(msg.contains("chmod 600"), "{msg}");
        write_pin(&pin_file, USER_PIN, 0o600);
        // Module missing: unavailable (retryable), and says so.
        let mut k2 = k.clone();
        k2.module = Some(PathBuf::from("/nonexistent/libsofthsm2.so"));
        let e = err(Pkcs11Provider::open(&c, &k2));
        assert!(matches!(e, KeyError::Unavailable { .. }), "{e}");
        assert!(e.to_string().contains("unavailable"), "{e}");
        // Token absent: unavailable, lists the labels found.
        let mut k3 = k.clone();
        k3.token_label = Some("no-such-token".into());
        let e = err(Pkcs11Provider::open(&c, &k3));
        assert!(matches!(e, KeyError::Unavailable { .. }), "{e}");
        assert!(e.to_string().contains("`wrongpin`"), "{e}");
        // The right PIN works.
        Pkcs11Provider::open(&c, &k).unwrap().health().unwrap();
    }

    #[test]
    fn destroy_shreds_and_is_remembered() {
        let _serial = serial();
        let p = open("destroy");
        let e = epoch("2026-12-29.1");
        let id = SnapshotId::new();
        p.ensure_epoch(&e).unwrap();
        let dek = DataKey::generate();
        let w = p.wrap(&e, &dek, &id).unwrap();
        p.destroy(&e).unwrap();
        p.destroy(&e).unwrap(); // idempotent
        let d = err(p.unwrap(&e, &w, &id));
        assert!(d.is_destroyed(), "{d}");
        assert!(d.to_string().contains(" at 20"), "{d}");
        assert!(err(p.ensure_epoch(&e)).is_destroyed());
        assert!(err(p.wrap(&e, &dek, &id)).is_destroyed());
        // Remembered by the token, not by this process.
        let p2 = open("destroy");
        assert!(err(p2.unwrap(&e, &w, &id)).is_destroyed());
        assert!(err(p2.ensure_epoch(&e)).is_destroyed());
        let epochs = p2.epochs().unwrap();
        assert_eq!(epochs.len(), 1);
        assert!(epochs[0].destroyed.is_some());
        assert!(epochs[0].created.starts_with("20"), "{:?}", epochs[0]);
        // Destroying an epoch never created leaves a tombstone too.
        let never = epoch("2030-01-01.1");
        p2.destroy(&never).unwrap();
        assert!(err(p2.ensure_epoch(&never)).is_destroyed());
        // No key material in the token's secret keys any more.
        let keys = p2
            .with_session(|s| Ok(s.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])?))
            .unwrap();
        assert!(keys.is_empty());
    }

    #[test]
    fn altered_wrapped_key_fails_to_unwrap() {
        let _serial = serial();
        let p = open("tamper");
        let e = epoch("2026-12-30.1");
        let other = epoch("2026-12-31.1");
        let id = SnapshotId::new();
        p.ensure_epoch(&e).unwrap();
        p.ensure_epoch(&other).unwrap();
        let dek = DataKey::generate();
        let w = p.wrap(&e, &dek, &id).unwrap();
        for i in [0, 7, 8, 39] {
            let mut bad = w.clone();
            bad[i] ^= 1;
            let r = err(p.unwrap(&e, &bad, &id));
            assert!(matches!(r, KeyError::UnwrapFailed { .. }), "byte {i}: {r}");
        }
        // Truncated, extended, empty.
        for bad in [&w[..39], &[w.as_slice(), &[0]].concat()[..], &[][..]] {
            assert!(matches!(
                err(p.unwrap(&e, bad, &id)),
                KeyError::UnwrapFailed { .. }
            ));
        }
        // Under another epoch's key.
        assert!(matches!(
            err(p.unwrap(&other, &w, &id)),
            KeyError::UnwrapFailed { .. }
        ));
        // The session is still fine afterwards.
        assert_eq!(p.unwrap(&e, &w, &id).unwrap().expose(), dek.expose());
    }

    #[test]
    fn epoch_key_is_not_extractable() {
        let _serial = serial();
        let p = open("sensitive");
        let e = epoch("2027-02-01.1");
        let other = epoch("2027-02-02.1");
        p.ensure_epoch(&e).unwrap();
        p.ensure_epoch(&other).unwrap();
        p.with_session(|s| {
            let keys = p.epoch_keys(s, &e)?;
            assert_eq!(keys.len(), 1);
            let h = keys[0].handle;
            // C_GetAttributeValue(CKA_VALUE) is refused (sensitive): an error, or no value.
            match s.get_attributes(h, &[AttributeType::Value]) {
                Ok(attrs) => assert!(
                    !attrs.iter().any(|a| matches!(a, Attribute::Value(_))),
                    "the epoch key's value was readable"
                ),
                Err(e) => assert!(
                    matches!(e, CkError::Pkcs11(RvError::AttributeSensitive, _)),
                    "{e}"
                ),
            }
            let attrs = s.get_attributes(
                h,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::Token,
                    AttributeType::Private,
                    AttributeType::Wrap,
                    AttributeType::Unwrap,
                    AttributeType::Encrypt,
                    AttributeType::Decrypt,
                    AttributeType::ValueLen,
                ],
            )?;
            assert_eq!(attrs.len(), 9);
            for a in &attrs {
                match a {
                    Attribute::Sensitive(v) => assert!(*v),
                    Attribute::Extractable(v) => assert!(!*v),
                    Attribute::Token(v) => assert!(*v),
                    Attribute::Private(v) => assert!(*v),
                    Attribute::Wrap(v) => assert!(*v),
                    Attribute::Unwrap(v) => assert!(*v),
                    Attribute::Encrypt(v) => assert!(!*v),
                    Attribute::Decrypt(v) => assert!(!*v),
                    Attribute::ValueLen(v) => assert_eq!(usize::from(*v), 32),
                    other => panic!("unexpected {other:?}"),
                }
            }
            // Wrapping it out under another key is refused too.
            let kek = p.epoch_keys(s, &other)?[0].handle;
            let r = s.wrap_key(&Mechanism::AesKeyWrapPad, kek, h);
            assert!(
                matches!(r, Err(CkError::Pkcs11(RvError::KeyUnextractable, _))),
                "{r:?}"
            );
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn pkcs11_tool_sees_the_key_until_destroyed() {
        let _serial = serial();
        let p = open("listing");
        let e = epoch("2027-03-01.1");
        p.ensure_epoch(&e).unwrap();
        let before = pkcs11_tool_objects("listing");
        assert!(before.contains("coffre-epoch-2027-03-01.1"), "{before}");
        assert!(!before.contains("coffre-tombstone-"), "{before}");
        p.destroy(&e).unwrap();
        let after = pkcs11_tool_objects("listing");
        assert!(!after.contains("coffre-epoch-2027-03-01.1"), "{after}");
        assert!(after.contains("coffre-tombstone-2027-03-01.1"), "{after}");
    }

    #[test]
    fn session_is_reopened_after_logout_or_close() {
        let _serial = serial();
        let p = open("relogin");
        let e = epoch("2027-04-01.1");
        p.ensure_epoch(&e).unwrap();
        let id = SnapshotId::new();
        let dek = DataKey::generate();
        let w = p.wrap(&e, &dek, &id).unwrap();
        // Logged out behind coffre's back: private objects would silently vanish.
        if let Some(s) = p.lock().as_ref() {
            s.logout().unwrap();
        }
        assert_eq!(p.unwrap(&e, &w, &id).unwrap().expose(), dek.expose());
        // Session closed.
        if let Some(s) = p.lock().take() {
            s.close().unwrap();
        }
        p.health().unwrap();
        assert_eq!(p.unwrap(&e, &w, &id).unwrap().expose(), dek.expose());
    }

    /// Issue 30: hosts sharing a token each see their own epoch keys (the same epoch id on
    /// every host): the root owner's labels as before, the others' beneath `<host>/`.
    #[test]
    fn hosts_sharing_a_token_never_touch_each_others_epoch_keys() {
        let _serial = serial();
        let root = open("fleet");
        let (h2, h3) = (open("fleet"), open("fleet"));
        h2.set_label_namespace("h2/");
        h3.set_label_namespace("h3/");
        let e = epoch("2027-04-01.1");
        let id = SnapshotId::new();
        let dek = DataKey::generate();
        let mut wraps = Vec::new();
        for p in [&root, &h2, &h3] {
            p.ensure_epoch(&e).unwrap();
            wraps.push(p.wrap(&e, &dek, &id).unwrap());
        }
        // Three keys: a wrap made by one host does not open with another's.
        assert!(root.unwrap(&e, &wraps[1], &id).is_err());
        assert!(h2.unwrap(&e, &wraps[2], &id).is_err());
        // h2 shreds the epoch: the root owner's and h3's keys stay, and list as live.
        h2.destroy(&e).unwrap();
        assert!(matches!(
            err(h2.unwrap(&e, &wraps[1], &id)),
            KeyError::KeyDestroyed { .. }
        ));
        for (p, w) in [(&root, &wraps[0]), (&h3, &wraps[2])] {
            assert_eq!(p.unwrap(&e, w, &id).unwrap().expose(), dek.expose());
            let listed = p.epochs().unwrap();
            assert_eq!(listed.len(), 1, "{listed:?}");
            assert!(listed[0].destroyed.is_none());
        }
        assert!(h2.epochs().unwrap()[0].destroyed.is_some());
        // The root owner destroys its own: h3's is still there.
        root.destroy(&e).unwrap();
        assert_eq!(
            h3.unwrap(&e, &wraps[2], &id).unwrap().expose(),
            dek.expose()
        );
    }

    #[test]
    fn epochs_lists_live_and_destroyed() {
        let _serial = serial();
        let p = open("epochs");
        let (a, b, c) = (
            epoch("2027-05-01.1"),
            epoch("2027-05-02.1"),
            epoch("2027-05-03.1"),
        );
        for e in [&a, &b, &c] {
            p.ensure_epoch(e).unwrap();
        }
        p.destroy(&b).unwrap();
        let got = p.epochs().unwrap();
        let ids: Vec<_> = got.iter().map(|e| e.epoch.to_string()).collect();
        assert_eq!(ids, ["2027-05-01.1", "2027-05-02.1", "2027-05-03.1"]);
        assert!(got[0].destroyed.is_none());
        assert!(got[1].destroyed.is_some());
        assert!(got[2].destroyed.is_none());
        // Foreign objects on the token are ignored.
        p.with_session(|s| {
            s.create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Label(b"someone-else".to_vec()),
                Attribute::Value(b"x".to_vec()),
            ])?;
            Ok(())
        })
        .unwrap();
        assert_eq!(p.epochs().unwrap().len(), 3);
    }

    #[test]
    fn duplicate_keys_and_interrupted_destroy() {
        let _serial = serial();
        let p = open("races");
        let e = epoch("2027-06-01.1");
        let id = SnapshotId::new();
        p.ensure_epoch(&e).unwrap();
        let dek = DataKey::generate();
        let w_old = p.wrap(&e, &dek, &id).unwrap();
        // A second key with the same label, as two hosts racing on ensure_epoch could make:
        // wraps keep using the oldest, unwraps try each.
        p.with_session(|s| {
            s.generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen(Ulong::try_from(DEK_LEN)?),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Wrap(true),
                    Attribute::Unwrap(true),
                    Attribute::Label(epoch_label("", &e)),
                    Attribute::Id(b"2999-01-01T00:00:00Z".to_vec()),
                ],
            )?;
            Ok(())
        })
        .unwrap();
        assert_eq!(p.wrap(&e, &dek, &id).unwrap(), w_old);
        let w_new = p
            .with_session(|s| {
                let keys = p.epoch_keys(s, &e)?;
                assert_eq!(keys.len(), 2);
                assert_eq!(keys[1].created, "2999-01-01T00:00:00Z");
                let template = SecretTemplate(vec![
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::Token(false),
                    Attribute::Extractable(true),
                    Attribute::Value(dek.expose().to_vec()),
                ]);
                let tmp = s.create_object(&template.0)?;
                let w = s.wrap_key(&Mechanism::AesKeyWrapPad, keys[1].handle, tmp)?;
                s.destroy_object(tmp)?;
                Ok(w)
            })
            .unwrap();
        assert_ne!(w_new, w_old);
        assert_eq!(p.unwrap(&e, &w_new, &id).unwrap().expose(), dek.expose());
        assert_eq!(p.unwrap(&e, &w_old, &id).unwrap().expose(), dek.expose());
        // A destroy interrupted after its tombstone: already refused, finished by ensure_epoch.
        p.with_session(|s| {
            s.create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Label(tombstone_label("", &e)),
                Attribute::Value(b"2027-06-01T00:00:00Z".to_vec()),
            ])?;
            Ok(())
        })
        .unwrap();
        let d = err(p.unwrap(&e, &w_old, &id));
        assert!(d.is_destroyed(), "{d}");
        assert!(d.to_string().contains("at 2027-06-01T00:00:00Z"), "{d}");
        assert!(err(p.ensure_epoch(&e)).is_destroyed());
        let left = p
            .with_session(|s| Ok(s.find_objects(&[Attribute::Label(epoch_label("", &e))])?))
            .unwrap();
        assert!(left.is_empty(), "both keys are gone");
        p.destroy(&e).unwrap();
    }

    #[test]
    fn token_kwp_is_rfc_5649_as_the_file_provider_does_it() {
        let _serial = serial();
        let p = open("kwp");
        let kek = [7u8; 32];
        let dek = DataKey::generate();
        let w = p
            .with_session(|s| {
                let session_key = |value: Vec<u8>, wrap: bool| {
                    SecretTemplate(vec![
                        Attribute::Class(ObjectClass::SECRET_KEY),
                        Attribute::KeyType(KeyType::AES),
                        Attribute::Token(false),
                        Attribute::Extractable(true),
                        Attribute::Wrap(wrap),
                        Attribute::Value(value),
                    ])
                };
                let k = s.create_object(&session_key(kek.to_vec(), true).0)?;
                let d = s.create_object(&session_key(dek.expose().to_vec(), false).0)?;
                let w = s.wrap_key(&Mechanism::AesKeyWrapPad, k, d)?;
                s.destroy_object(d)?;
                s.destroy_object(k)?;
                Ok(w)
            })
            .unwrap();
        let expected = aes_kw::KekAes256::from(kek)
            .wrap_with_padding_vec(dek.expose())
            .unwrap();
        assert_eq!(w, expected);
    }
}
