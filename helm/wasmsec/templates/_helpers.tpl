{{/* Names and labels. */}}
{{- define "wasmsec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wasmsec.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "wasmsec.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "wasmsec.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "wasmsec.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wasmsec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "wasmsec.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "wasmsec.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "wasmsec.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "wasmsec.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "wasmsec.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "wasmsec.pskSecret" -}}
{{- default (printf "%s-psk" (include "wasmsec.fullname" .)) .Values.psk.existingSecret -}}
{{- end -}}

{{- define "wasmsec.policyConfigMap" -}}
{{- default (printf "%s-policies" (include "wasmsec.fullname" .)) .Values.policy.existingConfigMap -}}
{{- end -}}

{{- define "wasmsec.policyMounted" -}}
{{- if and (or .Values.policy.enabled .Values.tenants) (or .Values.policy.volume .Values.policy.existingConfigMap .Values.policy.modules) -}}true{{- end -}}
{{- end -}}

{{/* Where policy modules are: the policy ConfigMap's mount, else the
example modules in the image. */}}
{{- define "wasmsec.policyDir" -}}
{{- if include "wasmsec.policyMounted" . -}}/etc/wasmsec/policies{{- else -}}/usr/lib/wasmsec/policies{{- end -}}
{{- end -}}

{{/* Refuse values that would render a config the daemon rejects. */}}
{{- define "wasmsec.validate" -}}
{{- if and .Values.connections (not .Values.psk.existingSecret) (not .Values.psk.keys) -}}
{{- fail "connections need PSKs: set psk.existingSecret or psk.keys" -}}
{{- end -}}
{{- if and (not .Values.psk.existingSecret) .Values.psk.keys -}}
{{- range .Values.connections -}}
{{- if not (hasKey $.Values.psk.keys .pskKey) -}}
{{- fail (printf "connection %s: psk.keys has no key %q" .name .pskKey) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $tenants := list -}}
{{- range .Values.tenants -}}{{- $tenants = append $tenants .name -}}{{- end -}}
{{- range .Values.connections -}}
{{- if and .tenant (not (has .tenant $tenants)) -}}
{{- fail (printf "connection %s: tenant %q is not in tenants" .name .tenant) -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.workload.kind "DaemonSet") (ne (int .Values.workload.replicas) 1) -}}
{{- fail "workload.replicas applies to a Deployment only" -}}
{{- end -}}
{{- end -}}

{{/*
The part of config.toml that the daemon reads only at start ([network],
[tunnel], [runtime], [control]): its checksum restarts pods when it
changes. Connections, tenants and the policy are reloaded in place
([control] watch_config), so a change there restarts nothing.
*/}}
{{- define "wasmsec.config.restart" -}}
[network]
listen = {{ .Values.gateway.listen | toJson }}
raw_esp = {{ .Values.gateway.rawEsp }}
raw_esp_send = {{ .Values.gateway.rawEspSend | toJson }}
copy_dscp = {{ .Values.gateway.copyDscp | toJson }}
copy_ecn = {{ .Values.gateway.copyEcn }}

[tunnel]
name = {{ .Values.gateway.tunnel.name | toJson }}
mtu = {{ .Values.gateway.tunnel.mtu }}
{{- with .Values.gateway.tunnel.source }}
source = {{ . | toJson }}
{{- end }}

[runtime]
components = "/usr/lib/wasmsec/components"
state_dir = "/var/lib/wasmsec"
batch = {{ .Values.gateway.batch }}

[control]
socket = "/run/wasmsec/control.sock"
watch_config = true
{{- if .Values.metrics.enabled }}
metrics = {{ printf "0.0.0.0:%v" .Values.metrics.port | toJson }}
{{- end }}
{{- end -}}

{{/* The part reloaded in place: policy, tenants, connections. */}}
{{- define "wasmsec.config.live" -}}
{{- if .Values.policy.enabled }}
[policy]
module = {{ printf "%s/%s" (include "wasmsec.policyDir" .) .Values.policy.module | toJson }}
watch = {{ .Values.policy.watch }}
{{ end }}
{{- $policyDir := include "wasmsec.policyDir" . }}
{{- range .Values.tenants }}
[[tenant]]
name = {{ .name | toJson }}
netns = {{ .netns | toJson }}
{{- with .tun }}
tun = {{ . | toJson }}
{{- end }}
{{- with .mtu }}
mtu = {{ . }}
{{- end }}
{{- with .source }}
source = {{ . | toJson }}
{{- end }}
{{- with .policy }}
policy = {{ printf "%s/%s" $policyDir . | toJson }}
{{- end }}

{{ end }}
{{- range .Values.connections }}
[[connection]]
name = {{ .name | toJson }}
{{- with .localAddrs }}
local_addrs = {{ . | toJson }}
{{- end }}
remote_addrs = {{ .remoteAddrs | toJson }}
local_id = {{ .localId | toJson }}
remote_id = {{ .remoteId | toJson }}
psk = {{ printf "file:/etc/wasmsec/psk/%s" .pskKey | toJson }}
{{- with .proposals }}
proposals = {{ . | toJson }}
{{- end }}
{{- with .startAction }}
start_action = {{ . | toJson }}
{{- end }}
{{- if hasKey . "encap" }}
encap = {{ .encap }}
{{- end }}
{{- if hasKey . "dpdDelay" }}
dpd_delay = {{ .dpdDelay }}
{{- end }}
{{- with .dpdAction }}
dpd_action = {{ . | toJson }}
{{- end }}
{{- if hasKey . "rekeyTime" }}
rekey_time = {{ .rekeyTime }}
{{- end }}
{{- with .tenant }}
tenant = {{ . | toJson }}
{{- end }}
{{- range .children }}

[[connection.children]]
name = {{ .name | toJson }}
local_ts = {{ .localTs | toJson }}
remote_ts = {{ .remoteTs | toJson }}
{{- with .espProposals }}
esp_proposals = {{ . | toJson }}
{{- end }}
{{- if hasKey . "rekeyTime" }}
rekey_time = {{ .rekeyTime }}
{{- end }}
{{- if hasKey . "replayWindow" }}
replay_window = {{ .replayWindow }}
{{- end }}
{{- with .copyDscp }}
copy_dscp = {{ . | toJson }}
{{- end }}
{{- if hasKey . "copyEcn" }}
copy_ecn = {{ .copyEcn }}
{{- end }}
{{- /* Volume and hard lifetimes; int64, as a large number would print as a float. */}}
{{- $child := . }}
{{- range $key, $name := dict "rekeyBytes" "rekey_bytes" "rekeyPackets" "rekey_packets" "lifeTime" "life_time" "lifeBytes" "life_bytes" "lifePackets" "life_packets" }}
{{- if hasKey $child $key }}
{{ $name }} = {{ index $child $key | int64 }}
{{- end }}
{{- end }}
{{- end }}

{{ end }}
{{- end -}}
