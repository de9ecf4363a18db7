// containerd-hosts loads a certs.d directory with containerd's own hosts loader
// (github.com/containerd/containerd/remotes/docker/config, pinned to v1.6.20: Debian 12's
// containerd) and prints, as JSON, the hosts containerd would try for a registry, in order, and
// every error the loader logged. containerd does not fail a pull on a hosts.toml it cannot parse:
// it logs "failed to decode hosts.toml" and ignores the file, so the errors are the verdict.
//
// Usage: containerd-hosts CERTS_D_ROOT HOST[:PORT]
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"

	"github.com/containerd/containerd/remotes/docker"
	"github.com/containerd/containerd/remotes/docker/config"
	"github.com/sirupsen/logrus"
)

type host struct {
	Host         string   `json:"host"`
	Scheme       string   `json:"scheme"`
	Path         string   `json:"path"`
	Capabilities []string `json:"capabilities"`
	Headers      []string `json:"headers"`
}

type errorHook struct{ errors []string }

func (h *errorHook) Levels() []logrus.Level {
	return []logrus.Level{logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel, logrus.WarnLevel}
}

func (h *errorHook) Fire(entry *logrus.Entry) error {
	message := entry.Message
	if err, ok := entry.Data[logrus.ErrorKey]; ok {
		message = fmt.Sprintf("%s: %v", message, err)
	}
	h.errors = append(h.errors, message)
	return nil
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: containerd-hosts CERTS_D_ROOT HOST[:PORT]")
		os.Exit(2)
	}
	hook := &errorHook{errors: []string{}}
	logrus.StandardLogger().AddHook(hook)
	logrus.SetOutput(os.Stderr)
	configure := config.ConfigureHosts(context.Background(), config.HostOptions{HostDir: config.HostDirFromRoot(os.Args[1])})
	registryHosts, err := configure(os.Args[2])
	if err != nil {
		hook.errors = append(hook.errors, err.Error())
	}
	hosts := []host{}
	for _, h := range registryHosts {
		capabilities := []string{}
		for _, c := range []struct {
			flag docker.HostCapabilities
			name string
		}{{docker.HostCapabilityPull, "pull"}, {docker.HostCapabilityResolve, "resolve"}, {docker.HostCapabilityPush, "push"}} {
			if h.Capabilities.Has(c.flag) {
				capabilities = append(capabilities, c.name)
			}
		}
		headers := []string{}
		for name := range h.Header {
			headers = append(headers, name)
		}
		sort.Strings(headers)
		hosts = append(hosts, host{Host: h.Host, Scheme: h.Scheme, Path: h.Path, Capabilities: capabilities, Headers: headers})
	}
	out, _ := json.Marshal(map[string]any{"hosts": hosts, "errors": hook.errors})
	fmt.Println(string(out))
}
