{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "nodeagent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name, unique per release. */}}
{{- define "nodeagent.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "nodeagent.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels (app.kubernetes.io/*), on every object: the agent's component. */}}
{{- define "nodeagent.labels" -}}
{{ include "nodeagent.baseLabels" . }}
app.kubernetes.io/component: node-agent
{{- end }}

{{/* The standard labels without a component, for objects that name their own (the uninstall
hook's cleanup DaemonSet): a key given twice is refused by strict YAML parsers (kustomize). */}}
{{- define "nodeagent.baseLabels" -}}
helm.sh/chart: {{ include "nodeagent.chart" . }}
{{ include "nodeagent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "nodeagent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nodeagent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nodeagent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nodeagent.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image; global.imageRegistry (a subchart's parent) replaces the repository's registry. */}}
{{- define "nodeagent.image" -}}
{{- $repository := .Values.image.repository }}
{{- with (.Values.global | default dict).imageRegistry }}
{{- $parts := splitList "/" $repository }}
{{- if and (gt (len $parts) 1) (or (contains "." (first $parts)) (contains ":" (first $parts)) (eq (first $parts) "localhost")) }}
{{- $parts = rest $parts }}
{{- end }}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) (join "/" $parts) }}
{{- end }}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if and (kindIs "float64" $tag) (eq (float64 (int64 $tag)) $tag) }}
{{- $tag = int64 $tag }}{{/* YAML reads 20240101 as a number, which Helm holds as a float */}}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (toString $tag) }}
{{- end }}
{{- end }}

{{/*
Node layout presets: the kubelet's --root-dir on each kind of cluster, where it reads config.json
first. Sources:
  kubeadm  - the kubelet's own default (kubelet command-line reference, --root-dir).
  eks      - the EKS AMIs (awslabs/amazon-eks-ami) leave --root-dir at its default.
  aks      - AKS node images (AgentBaker) leave --root-dir at its default.
  gke      - GKE node images (COS/Ubuntu configure-helper) leave --root-dir at its default.
  k3s      - k3s sets the kubelet's root-dir to /var/lib/kubelet (pkg/daemons/agent).
  rke2     - RKE2 runs the k3s agent code: the same root-dir.
  microk8s - snap/microk8s args/kubelet: --root-dir=${SNAP_COMMON}/var/lib/kubelet,
             SNAP_COMMON being /var/snap/microk8s/common.
*/}}
{{- define "nodeagent.kubeletRootDir" -}}
{{- $presets := dict
  "kubeadm" "/var/lib/kubelet"
  "eks" "/var/lib/kubelet"
  "aks" "/var/lib/kubelet"
  "gke" "/var/lib/kubelet"
  "k3s" "/var/lib/kubelet"
  "rke2" "/var/lib/kubelet"
  "microk8s" "/var/snap/microk8s/common/var/lib/kubelet" -}}
{{- if .Values.kubeletRootDir }}
{{- .Values.kubeletRootDir }}
{{- else }}
{{- required (printf "unknown distribution %q" .Values.distribution) (get $presets .Values.distribution) }}
{{- end }}
{{- end }}

{{/* Secret namespaces default to the release namespace. */}}
{{- define "nodeagent.secretNamespace" -}}
{{- default .root.Release.Namespace .secret.namespace }}
{{- end }}

{{/*
Credential-provider paths for ECR, as "binDir|configPath" (mirrors nodeagent.config.PROVIDER_PRESETS):
  eks     - the EKS AL2023 AMI runs the kubelet with --image-credential-provider-bin-dir=/etc/eks/image-credential-provider
            and --image-credential-provider-config=/etc/eks/image-credential-provider/config.json.
  kubeadm - no upstream default: nodeagent's convention, to be set in the kubelet's flags (docs/ecr.md).
*/}}
{{- define "nodeagent.providerPaths" -}}
{{- $presets := dict
  "eks" (list "/etc/eks/image-credential-provider" "/etc/eks/image-credential-provider/config.json")
  "kubeadm" (list "/usr/libexec/kubernetes/credential-providers" "/etc/kubernetes/credential-providers") -}}
{{- $cp := .Values.credentialProvider -}}
{{- $preset := get $presets ($cp.providerPreset | default .Values.ecr.providerPreset | default "") | default (list "" "") -}}
{{- $bin := $cp.providerBinDir | default .Values.ecr.providerBinDir | default (index $preset 0) -}}
{{- $config := $cp.providerConfig | default .Values.ecr.providerConfig | default (index $preset 1) -}}
{{- if and $bin $config }}{{ printf "%s|%s" $bin $config }}{{ end -}}
{{- end }}

{{/*
containerd's config.toml by distribution (mirrors nodeagent.config.CONTAINERD_PRESETS):
  kubeadm, eks, aks, gke, microk8s - /etc/containerd/config.toml (microk8s: its snap's args dir)
  k3s, rke2 - /var/lib/rancher/{k3s,rke2}/agent/etc/containerd/config.toml (regenerated at start;
              hosts.toml under certs.d there is kept, config.toml edits are not: no auth there).
*/}}
{{- define "nodeagent.containerdConfig" -}}
{{- $presets := dict
  "kubeadm" "/etc/containerd/config.toml"
  "eks" "/etc/containerd/config.toml"
  "aks" "/etc/containerd/config.toml"
  "gke" "/etc/containerd/config.toml"
  "k3s" "/var/lib/rancher/k3s/agent/etc/containerd/config.toml"
  "rke2" "/var/lib/rancher/rke2/agent/etc/containerd/config.toml"
  "microk8s" "/var/snap/microk8s/current/args/containerd.toml" -}}
{{- .Values.containerd.configPath | default (get $presets .Values.distribution) }}
{{- end }}
