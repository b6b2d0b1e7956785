{{/*
Names, labels, images and the shared security settings of the tokenmesh chart.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "tokenmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every resource name: fullnameOverride, else the release name when
it already contains the chart name, else "<release>-<chart>". Kept to 40
characters so that "<prefix>-token-server-data" and the like stay within 63.
*/}}
{{- define "tokenmesh.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "tokenmesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of a component: dict "ctx" $ "component" "token-server". */}}
{{- define "tokenmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenmesh.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every label of a component's resources: dict "ctx" $ "component" "operator". */}}
{{- define "tokenmesh.labels" -}}
helm.sh/chart: {{ include "tokenmesh.chart" .ctx }}
{{ include "tokenmesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: tokenmesh
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
An image reference: dict "image" .Values.x.image "name" "operator" "ctx" $.
The component's repository, else "<image.registry>/<name>"; its tag, else
image.tag, else the appVersion. A digest pins it.
*/}}
{{- define "tokenmesh.image" -}}
{{- $global := .ctx.Values.image -}}
{{- $repository := .image.repository | default (printf "%s/%s" $global.registry .name) -}}
{{- $tag := .image.tag | default $global.tag | default .ctx.Chart.AppVersion -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}
{{- end -}}

{{/* A pull policy: the component's, else image.pullPolicy. */}}
{{- define "tokenmesh.imagePullPolicy" -}}
{{- .image.pullPolicy | default .ctx.Values.image.pullPolicy -}}
{{- end -}}

{{/* Component names. */}}
{{- define "tokenmesh.tokenServer.name" -}}
{{- printf "%s-token-server" (include "tokenmesh.fullname" .) -}}
{{- end -}}

{{- define "tokenmesh.operator.name" -}}
{{- printf "%s-operator" (include "tokenmesh.fullname" .) -}}
{{- end -}}

{{- define "tokenmesh.webhook.name" -}}
{{- printf "%s-webhook" (include "tokenmesh.fullname" .) -}}
{{- end -}}

{{- define "tokenmesh.tokenServer.serviceAccountName" -}}
{{- if .Values.tokenServer.serviceAccount.create -}}
{{- default (include "tokenmesh.tokenServer.name" .) .Values.tokenServer.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.tokenServer.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tokenmesh.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "tokenmesh.operator.name" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the ControlService admin credential. */}}
{{- define "tokenmesh.adminToken.secretName" -}}
{{- default (printf "%s-admin-token" (include "tokenmesh.fullname" .)) .Values.adminToken.existingSecret -}}
{{- end -}}

{{/* The Secret holding the webhook's serving certificate. */}}
{{- define "tokenmesh.webhook.secretName" -}}
{{- if eq .Values.webhook.certificate.source "secret" -}}
{{- .Values.webhook.certificate.secret.name -}}
{{- else -}}
{{- printf "%s-tls" (include "tokenmesh.webhook.name" .) -}}
{{- end -}}
{{- end -}}

{{/* The TokenServer resource whose signing keys the operator manages, and their Secret. */}}
{{- define "tokenmesh.signingKeys.secretName" -}}
{{- printf "%s-signing-keys" (include "tokenmesh.fullname" .) -}}
{{- end -}}

{{/* http or https, as the token server serves. */}}
{{- define "tokenmesh.tokenServer.scheme" -}}
{{- if .Values.tokenServer.tls.enabled -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{/* The Secret of the token server's certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "tokenmesh.tokenServer.tlsSecretName" -}}
{{- if eq .Values.tokenServer.tls.source "secret" -}}
{{- .Values.tokenServer.tls.secretName -}}
{{- else -}}
{{- printf "%s-tls" (include "tokenmesh.tokenServer.name" .) -}}
{{- end -}}
{{- end -}}

{{/* The Secret of the CA that issues the token server's certificate (operator or the chart's cert-manager CA). */}}
{{- define "tokenmesh.tokenServer.caSecretName" -}}
{{- printf "%s-ca" (include "tokenmesh.tokenServer.name" .) -}}
{{- end -}}

{{/* The token server Service's in-cluster host name. */}}
{{- define "tokenmesh.tokenServer.host" -}}
{{- printf "%s.%s.svc" (include "tokenmesh.tokenServer.name" .) .Release.Namespace -}}
{{- end -}}

{{/* The issuer: the value, else the Service's HTTP URL. */}}
{{- define "tokenmesh.issuer" -}}
{{- if .Values.tokenServer.issuer -}}
{{- .Values.tokenServer.issuer -}}
{{- else -}}
{{- printf "%s://%s:%d" (include "tokenmesh.tokenServer.scheme" .) (include "tokenmesh.tokenServer.host" .) (int .Values.tokenServer.service.httpPort) -}}
{{- end -}}
{{- end -}}

{{/* The token server's gRPC URL (ControlService for the operator, TokenService for sidecars). */}}
{{- define "tokenmesh.tokenServer.grpcUrl" -}}
{{- printf "%s://%s:%d" (include "tokenmesh.tokenServer.scheme" .) (include "tokenmesh.tokenServer.host" .) (int .Values.tokenServer.service.grpcPort) -}}
{{- end -}}

{{/* The pod security context of every pod of the chart. */}}
{{- define "tokenmesh.podSecurityContext" -}}
runAsNonRoot: true
{{- with .Values.securityContext.runAsUser }}
runAsUser: {{ . }}
{{- end }}
{{- if not (kindIs "invalid" .Values.securityContext.runAsGroup) }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
{{- end }}
{{- if not (kindIs "invalid" .Values.securityContext.fsGroup) }}
fsGroup: {{ .Values.securityContext.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
File mode of mounted Secrets: group-readable only when fsGroup makes the
group ours, else readable by all (the files stay inside the pod).
*/}}
{{- define "tokenmesh.secretMode" -}}
{{- if kindIs "invalid" .Values.securityContext.fsGroup -}}0444{{- else -}}0440{{- end -}}
{{- end -}}

{{/* The container security context of every container of the chart. */}}
{{- define "tokenmesh.containerSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
Combinations values.schema.json cannot explain well, refused with a message
that says what to change. Included by the token server Deployment, which
every install renders.
*/}}
{{- define "tokenmesh.validate" -}}
{{- $ts := .Values.tokenServer -}}
{{- if eq $ts.storage.type "embedded" -}}
{{- if gt (int $ts.replicas) 1 -}}
{{- fail (printf "tokenServer.replicas=%d needs tokenServer.storage.type=postgres: the embedded store is one SQLite file on one volume, with one writer" (int $ts.replicas)) -}}
{{- end -}}
{{- if $ts.autoscaling.enabled -}}
{{- fail "tokenServer.autoscaling.enabled needs tokenServer.storage.type=postgres: the embedded store allows one replica" -}}
{{- end -}}
{{- end -}}
{{- if and (eq $ts.storage.type "postgres") (not $ts.storage.postgres.urlSecret.name) -}}
{{- fail "tokenServer.storage.type=postgres needs tokenServer.storage.postgres.urlSecret.name: a Secret holding the PostgreSQL URL" -}}
{{- end -}}
{{- if and $ts.autoscaling.enabled (gt (int $ts.autoscaling.minReplicas) (int $ts.autoscaling.maxReplicas)) -}}
{{- fail "tokenServer.autoscaling.minReplicas is greater than maxReplicas" -}}
{{- end -}}
{{- if and $ts.tls.enabled (eq $ts.tls.source "secret") (not $ts.tls.secretName) -}}
{{- fail "tokenServer.tls.source=secret needs tokenServer.tls.secretName (a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt)" -}}
{{- end -}}
{{- if and $ts.tls.clientCa.configMapName $ts.tls.clientCa.secretName -}}
{{- fail "tokenServer.tls.clientCa: set configMapName or secretName, not both" -}}
{{- end -}}
{{- if and (or $ts.tls.clientCa.configMapName $ts.tls.clientCa.secretName) (not $ts.tls.enabled) -}}
{{- fail "tokenServer.tls.clientCa needs tokenServer.tls.enabled=true: client certificates come with the TLS handshake" -}}
{{- end -}}
{{- if and $ts.keyEncryption.previous (not $ts.keyEncryption.secretName) -}}
{{- fail "tokenServer.keyEncryption.previous needs tokenServer.keyEncryption.secretName: the secret that encrypts now" -}}
{{- end -}}
{{- if and (eq $ts.signingKeys "operator") $ts.keyEncryption.secretName -}}
{{- fail "tokenServer.keyEncryption.secretName needs tokenServer.signingKeys=store: the operator's keys live in a Secret, not in the store" -}}
{{- end -}}
{{- if and (eq $ts.signingKeys "operator") .Values.operator.namespaces -}}
{{- fail "tokenServer.signingKeys=operator needs the cluster-wide operator (operator.namespaces empty): its TokenServer controller watches every namespace" -}}
{{- end -}}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.operator.leaderElection) -}}
{{- fail "operator.replicas > 1 needs operator.leaderElection=true, or the replicas reconcile against each other" -}}
{{- end -}}
{{- if and .Values.webhook.enabled (eq .Values.webhook.certificate.source "secret") -}}
{{- if not .Values.webhook.certificate.secret.name -}}
{{- fail "webhook.certificate.source=secret needs webhook.certificate.secret.name (a kubernetes.io/tls Secret)" -}}
{{- end -}}
{{- if not .Values.webhook.certificate.secret.caBundle -}}
{{- fail "webhook.certificate.source=secret needs webhook.certificate.secret.caBundle (base64 of the PEM CA), or the API server cannot trust the webhook" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The operator's rules on the watched resources (ClusterRole or Roles). */}}
{{- define "tokenmesh.operator.rules" -}}
# Watch the resources; add and remove the finalizer tokenmesh.dev/token-server.
- apiGroups: ["tokenmesh.dev"]
  resources: ["oauthclients", "scopes", "exchangepolicies", "tokenservers", "identityproviders"]
  verbs: ["get", "list", "watch", "patch", "update"]
# Report Ready (server-side apply).
- apiGroups: ["tokenmesh.dev"]
  resources: ["oauthclients/status", "scopes/status", "exchangepolicies/status", "tokenservers/status", "identityproviders/status"]
  verbs: ["get", "patch"]
# Read referenced client secrets; write generated ones (client secrets,
# signing keys, the webhook certificate).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Report changes and failures.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{/*
The TokenServer spec of the token server's --config (and of the TokenServer
resource with signingKeys=operator): the values, and the operator's key
directory when it manages the keys.
*/}}
{{- define "tokenmesh.tokenServer.spec" -}}
{{- $spec := deepCopy (default dict .Values.tokenServer.spec) -}}
{{- if eq .Values.tokenServer.signingKeys "operator" -}}
{{- $signing := default dict $spec.signing -}}
{{- $_ := set $signing "keyDirectory" "/etc/tokenmesh/signing-keys" -}}
{{- $_ := set $spec "signing" $signing -}}
{{- end -}}
{{- with .Values.tokenServer.keyEncryption -}}
{{- if .secretName -}}
{{- /* Mounted under --secrets-dir as <secretName>/<key>. */ -}}
{{- $signing := default dict $spec.signing -}}
{{- $_ := set $signing "keyEncryptionKeyRef" (dict "name" .secretName "key" .key) -}}
{{- with .previous -}}
{{- $previous := list -}}
{{- range . -}}
{{- $previous = append $previous (dict "name" .secretName "key" .key) -}}
{{- end -}}
{{- $_ := set $signing "previousKeyEncryptionKeyRefs" $previous -}}
{{- end -}}
{{- $_ := set $spec "signing" $signing -}}
{{- end -}}
{{- end -}}
{{- with .Values.tokenServer.workloadIdentity -}}
{{- if .enabled -}}
{{- /* The audience injected sidecars' projected tokens carry; caFile and
tokenFile default to the in-pod paths the Deployment mounts. */ -}}
{{- $kubernetes := dict "audience" $.Values.sidecar.tokenAudience -}}
{{- /* No issuer: the token server takes the one the API server's discovery names. */ -}}
{{- with .issuer -}}
{{- $_ := set $kubernetes "issuer" . -}}
{{- end -}}
{{- with .discoveryUrl -}}
{{- $_ := set $kubernetes "discoveryUrl" . -}}
{{- end -}}
{{- if .tokenReview -}}
{{- $_ := set $kubernetes "tokenReview" true -}}
{{- end -}}
{{- $_ := set $spec "kubernetes" $kubernetes -}}
{{- end -}}
{{- end -}}
{{- if $spec -}}
{{- toYaml $spec -}}
{{- else -}}
{}
{{- end -}}
{{- end -}}

{{/*
The sampler of a component that exports trace spans (tracing.otlpEndpoint
set); nothing when tracing is off.
*/}}
{{- define "tokenmesh.tracingEnv" -}}
{{- with .Values.tracing }}
{{- if .otlpEndpoint -}}
- name: OTEL_TRACES_SAMPLER
  value: {{ .sampler | quote }}
{{- with .samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
