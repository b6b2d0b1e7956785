# A test cluster's certificates (sourced by tests/e2e/control-plane.sh and tests/cluster/cluster.sh):
# short-lived (2 days) RSA keys and certificates under $state/pki. Needs: $state.

# Extensions of a serving and of a client certificate (cert's EXTS; add a subjectAltName line).
pki_server='basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth'
pki_client='basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth'

# ca NAME CN: a self-signed CA, $state/pki/NAME.{key,crt}.
ca() {
    mkdir -p "$state/pki"
    openssl req -x509 -new -newkey rsa:2048 -nodes -days 2 -sha256 -subj "/CN=$2" \
        -keyout "$state/pki/$1.key" -out "$state/pki/$1.crt" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
}

# cert NAME CA SUBJECT EXTS: a key and a certificate signed by CA (made by ca).
cert() {
    local name=$1 ca=$2 subj=$3 ext=$4 p="$state/pki"
    openssl req -new -newkey rsa:2048 -nodes -keyout "$p/$name.key" -subj "$subj" -out "$p/$name.csr" 2>/dev/null
    printf '%s\n' "$ext" >"$p/$name.ext"
    openssl x509 -req -in "$p/$name.csr" -CA "$p/$ca.crt" -CAkey "$p/$ca.key" -CAcreateserial \
        -days 2 -sha256 -extfile "$p/$name.ext" -out "$p/$name.crt" 2>/dev/null
    rm -f "$p/$name.csr" "$p/$name.ext"
}

# sa_keys: the service-account token signing key pair, $state/pki/sa.{key,pub}; every key 0600.
sa_keys() {
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$state/pki/sa.key" 2>/dev/null
    openssl pkey -in "$state/pki/sa.key" -pubout -out "$state/pki/sa.pub"
    chmod 600 "$state"/pki/*.key
}
