{{/*
Common labels of every object of this release.
*/}}
{{- define "aegis.labels" -}}
app.kubernetes.io/part-of: aegis
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of the Safe's pods (VSecM's name label). */}}
{{- define "aegis.safe.selector" -}}
app.kubernetes.io/name: vsecm-safe
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector labels of the Sentinel's pods (VSecM's name label). */}}
{{- define "aegis.sentinel.selector" -}}
app.kubernetes.io/name: vsecm-sentinel
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The image reference: digest wins over tag; the tag defaults to appVersion. */}}
{{- define "aegis.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The Safe's URL as clients in the cluster reach it (VSECM_SAFE_ENDPOINT_URL). */}}
{{- define "aegis.safe.url" -}}
https://{{ .Values.safe.service.name }}.{{ .Release.Namespace }}.svc.{{ .Values.clusterDomain }}:{{ .Values.safe.service.port }}/
{{- end -}}

{{/* A ClusterSPIFFEID template with the trust domain (and a workload name) filled in. */}}
{{- define "aegis.idTemplate" -}}
{{- $t := regexReplaceAll `\{\{-?\s*\.TrustDomain\s*-?\}\}` .template .td -}}
{{- if .workload -}}
{{- $t = regexReplaceAll `\{\{-?\s*\.WorkloadName\s*-?\}\}` $t .workload -}}
{{- end -}}
{{- if not (hasPrefix (printf "spiffe://%s/" .td) $t) -}}
{{- fail (printf "spire.idTemplates.%s must start with spiffe://<spire.trustDomain>/ (spiffe://%s/), not %q" .which .td .template) -}}
{{- end -}}
{{- $t -}}
{{- end -}}

{{/*
The role rule (a regular expression, as the Safe reads VSECM_SPIFFEID_PREFIX_*)
that matches exactly the IDs a SPIFFE ID template yields. Arguments: template,
td (trust domain), which (the template's name, for errors), ns and sa (the
regular expression for the namespace and the ServiceAccount placeholders), wl
(the one for the workload name). Literal text is quoted; any other placeholder
(the pod name, …) is one path segment.
*/}}
{{- define "aegis.idPattern" -}}
{{- $t := include "aegis.idTemplate" (dict "template" .template "td" .td "which" .which) -}}
{{- $path := trimPrefix (printf "spiffe://%s" .td) $t -}}
{{- $path = regexReplaceAll `\{\{-?\s*\.PodMeta\.Namespace\s*-?\}\}` $path "AEGIS0NS0" -}}
{{- $path = regexReplaceAll `\{\{-?\s*\.PodSpec\.ServiceAccountName\s*-?\}\}` $path "AEGIS0SA0" -}}
{{- $path = regexReplaceAll `\{\{-?\s*\.WorkloadName\s*-?\}\}` $path "AEGIS0WL0" -}}
{{- $path = regexReplaceAll `\{\{.*?\}\}` $path "AEGIS0ANY0" -}}
{{- $path = regexQuoteMeta $path -}}
{{- $path = replace "AEGIS0NS0" .ns $path -}}
{{- $path = replace "AEGIS0SA0" .sa $path -}}
{{- $path = replace "AEGIS0WL0" (.wl | default "[^/]+") $path -}}
{{- $path = replace "AEGIS0ANY0" "[^/]+" $path -}}
^spiffe://{{ .td }}{{ $path }}$
{{- end -}}

{{/*
The role rules every Aegis process of this release reads, derived from the
SPIFFE ID templates so that the Safe accepts exactly the IDs SPIRE issues.
*/}}
{{- define "aegis.roleEnv" -}}
{{- $td := .Values.spire.trustDomain -}}
{{- $ns := regexQuoteMeta .Release.Namespace -}}
{{- $t := .Values.spire.idTemplates -}}
- name: SPIFFE_TRUST_DOMAIN
  value: {{ $td | quote }}
- name: VSECM_SPIFFEID_PREFIX_SAFE
  value: {{ include "aegis.idPattern" (dict "template" $t.safe "which" "safe" "td" $td "ns" $ns "sa" (regexQuoteMeta .Values.safe.serviceAccount.name)) | quote }}
- name: VSECM_SPIFFEID_PREFIX_SENTINEL
  value: {{ include "aegis.idPattern" (dict "template" $t.sentinel "which" "sentinel" "td" $td "ns" $ns "sa" (regexQuoteMeta .Values.sentinel.serviceAccount.name)) | quote }}
- name: VSECM_SPIFFEID_PREFIX_WORKLOAD
  value: {{ include "aegis.idPattern" (dict "template" $t.workload "which" "workload" "td" $td "ns" "[^/]+" "sa" "[^/]+") | quote }}
- name: VSECM_WORKLOAD_NAME_REGEXP
  value: {{ include "aegis.idPattern" (dict "template" $t.workload "which" "workload" "td" $td "ns" "[^/]+" "sa" "[^/]+" "wl" "([^/]+)") | quote }}
{{- end -}}

{{/* Environment shared by the Safe and the Sentinel. */}}
{{- define "aegis.commonEnv" -}}
- name: SPIFFE_ENDPOINT_SOCKET
  value: unix:///spire-agent-socket/spire-agent.sock
- name: AEGIS_LOG
  value: {{ .Values.log.level | quote }}
- name: AEGIS_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
{{ include "aegis.roleEnv" . }}
{{- end -}}

{{/* Pod security context: non-root, fixed ids, seccomp RuntimeDefault. */}}
{{- define "aegis.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.runAsUser }}
runAsGroup: {{ .Values.runAsGroup }}
fsGroup: {{ .Values.runAsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container security context: nothing more than a plain process needs. */}}
{{- define "aegis.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.runAsUser }}
runAsGroup: {{ .Values.runAsGroup }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The SPIRE agent's Workload API socket, through the SPIFFE CSI driver. */}}
{{- define "aegis.spireVolume" -}}
- name: spire-agent-socket
  csi:
    driver: {{ .Values.spire.csiDriver | quote }}
    readOnly: true
{{- end -}}

{{/* Whether the Safe calls the Kubernetes API (and so needs a token). */}}
{{- define "aegis.safe.usesKubeApi" -}}
{{- if or (eq .Values.safe.rootKey.store "kubernetes") .Values.k8sSecrets.enabled -}}true{{- end -}}
{{- end -}}

{{/* Pod placement settings shared by both workloads (argument: the component's values). */}}
{{- define "aegis.placement" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- end -}}
