//! `hash` and `import`: move existing keys in by their SHA-256, without re-keying anyone.

use super::*;

/// Read all of stdin (a key, or JSON lines).
pub(super) fn read_stdin() -> Result<String, Failure> {
    let mut input = String::new();
    io::stdin()
        .lock()
        .read_to_string(&mut input)
        .map_err(|e| Failure::usage(format!("cannot read stdin: {e}")))?;
    Ok(input)
}

pub(super) fn hash() -> Outcome {
    let input = zeroize::Zeroizing::new(read_stdin()?);
    let key = input.trim();
    if key.is_empty() {
        return Err(Failure::usage(
            "no key on stdin: pipe one key in, e.g. `tower-api-key hash < key.txt`",
        ));
    }
    if key.contains(char::is_whitespace) {
        return Err(Failure::usage(
            "stdin holds more than one word: `hash` reads exactly one key",
        ));
    }
    print_stdout(&KeyHash::of(key).to_hex())
}

/// One line of `import`'s input.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ImportLine {
    hash: String,
    org: String,
    name: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    created: Option<TimeField>,
    #[serde(default)]
    expires: Option<TimeField>,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    hint: Option<String>,
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum TimeField {
    UnixSecs(u64),
    Rfc3339(String),
}

impl TimeField {
    fn timestamp(&self) -> Result<Timestamp, String> {
        match self {
            TimeField::UnixSecs(s) => Ok(Timestamp::from_unix_secs(*s)),
            TimeField::Rfc3339(s) => humantime::parse_rfc3339_weak(s)
                .map(Timestamp::from)
                .map_err(|e| {
                    format!("invalid time {s:?}: {e}; use unix seconds or RFC 3339 (2025-01-31T12:00:00Z)")
                }),
        }
    }
}

pub(super) fn import_record(line: &str) -> Result<KeyRecord, String> {
    let l: ImportLine = serde_json::from_str(line).map_err(|e| {
        format!("{e}; expected {{\"hash\": HEX, \"org\": ORG, \"name\": NAME, \"scopes\": [..], \"created\": T, \"expires\": T}}")
    })?;
    let hash = KeyHash::from_hex(l.hash.trim()).ok_or_else(|| {
        format!(
            "invalid hash {:?}: 64 hex digits of the key's SHA-256, as `tower-api-key hash` prints",
            l.hash
        )
    })?;
    if l.org.trim().is_empty() {
        return Err("empty org".to_owned());
    }
    let name = l.name.trim();
    if name.is_empty() || name.chars().count() > 128 {
        return Err("key names must be 1 to 128 characters".to_owned());
    }
    let scopes = Scopes::parse(&l.scopes).map_err(|e| e.to_string())?;
    let created = match &l.created {
        Some(t) => t.timestamp()?,
        None => Timestamp::now(),
    };
    let expires = l.expires.as_ref().map(TimeField::timestamp).transpose()?;
    let environment = l.environment.unwrap_or_else(|| "live".to_owned());
    // The environment label follows the key formats' rule.
    KeyFormat::new("x_", &environment).map_err(|e| e.to_string())?;
    let id = match l.id {
        Some(id) if !id.trim().is_empty() => KeyId::from(id.trim()),
        _ => KeyId::generate().map_err(|e| e.to_string())?,
    };
    let mut record = KeyRecord::new(
        id,
        OrgId::from(l.org.trim()),
        name.to_owned(),
        hash,
        l.hint.unwrap_or_else(|| "(imported)".to_owned()),
        scopes,
        Arc::from(environment.as_str()),
        created,
    );
    record.expires_at = expires;
    Ok(record)
}

pub(super) async fn import(store: BoxedStore) -> Outcome {
    // Check every line before writing any.
    let mut records = Vec::new();
    for (n, line) in io::stdin().lock().lines().enumerate() {
        let line = line.map_err(|e| Failure::usage(format!("cannot read stdin: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let record =
            import_record(&line).map_err(|e| Failure::usage(format!("line {}: {e}", n + 1)))?;
        records.push((n + 1, record));
    }
    if records.is_empty() {
        return Err(Failure::usage(
            "nothing to import: give one JSON object a line on stdin",
        ));
    }
    let total = records.len();
    for (done, (n, record)) in records.into_iter().enumerate() {
        let id = record.id.clone();
        match store.insert(record).await {
            Ok(()) => print_stdout(id.as_str())?,
            Err(StoreError::Duplicate) => {
                return Err(Failure::new(
                    CONFLICT,
                    format!(
                        "line {n}: a key with this hash or id already exists; {done} of {total} keys imported before it (their ids are on stdout): remove the lines up to {n} and run again"
                    ),
                ));
            }
            Err(e) => {
                let mut f = store_failure(e);
                f.message = format!(
                    "line {n}: {}; {done} of {total} keys imported before it",
                    f.message
                );
                return Err(f);
            }
        }
    }
    eprintln!("imported {total} keys");
    Ok(())
}
