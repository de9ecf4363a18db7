// kubelet-credentials runs the kubelet's own credential code (k8s.io/kubernetes v1.34.4,
// pkg/credentialprovider and pkg/credentialprovider/plugin), so tests judge nodeagent's files
// and plugins with what the kubelet really does rather than with a model written here.
//
//	lookup --root-dir DIR IMAGE
//	    the credentials the kubelet's keyring returns for IMAGE, in its order, from the
//	    config.json it reads with --root-dir DIR (its own search order and parser; HOME and the
//	    working directory point at empty directories), after its image-name normalisation
//	provide --config FILE --bin-dir DIR [--service-account NS/NAME --token JWT] IMAGE
//	    the same through the kubelet's plugin manager: strict config load and validation, exec
//	    of the plugin with the config's args and env, response decoding and cache; IMAGE "-"
//	    reads one image a line from stdin and answers each on a line, all through one plugin
//	    manager (one cache), so a test can change the node between two pulls
//	check-provider-config [--bin-dir DIR] PATH
//	    exit 0 when the kubelet would load PATH (a file, or a directory whose *.json|*.yaml|*.yml
//	    files it merges), 1 with the kubelet's own error otherwise; with --bin-dir, the plugin
//	    binaries must exist there as they must at kubelet start, else each gets a stub
//	serve
//	    answers JSON lines on stdin, one per line on stdout, so tests can ask thousands of
//	    questions without a process each:
//	    {"op": "read", "content": B64} -> {"ok": true, "entries": [{"key", "username", "password"}]}
//	        (sorted by key) or {"ok": false, "error": ...}: what the kubelet loads from a
//	        config.json with these bytes (ReadSpecificDockerConfigJSONFile, the call its search
//	        order makes for each path; a file it rejects is skipped for the next path)
//	    {"op": "lookup", "content": B64, "image": IMAGE} -> {"ok": true, "image": normalised,
//	        "credentials": [...]}: its keyring (BasicDockerKeyring.Add, Lookup) over that file
//
// Output of lookup and provide: {"image": normalised, "credentials": [{"username", "password"}...]}.
package main

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kubernetes/pkg/credentialprovider"
	"k8s.io/kubernetes/pkg/credentialprovider/plugin"
	"k8s.io/kubernetes/pkg/util/parsers"
	"sigs.k8s.io/yaml"
)

// credential carries each value twice: as a JSON string (invalid UTF-8 replaced byte by byte by
// Go's encoder) and as the exact bytes, base64-encoded, for comparisons that must not depend on
// how the answer was transported.
type credential struct {
	Username      string `json:"username"`
	Password      string `json:"password"`
	UsernameBytes []byte `json:"usernameBytes"`
	PasswordBytes []byte `json:"passwordBytes"`
}

func newCredential(username, password string) credential {
	return credential{username, password, []byte(username), []byte(password)}
}

func fail(code int, format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(code)
}

// isolate points HOME and the working directory at empty directories, so the kubelet's search
// order finds only what the test put under --root-dir.
func isolate() {
	empty, err := os.MkdirTemp("", "kubelet-credentials-")
	if err != nil {
		fail(2, "%v", err)
	}
	os.Setenv("HOME", empty)
	if err := os.Chdir(empty); err != nil {
		fail(2, "%v", err)
	}
}

func lookup(keyring credentialprovider.DockerKeyring, image string) (string, []credential, error) {
	repo, _, _, err := parsers.ParseImageName(image)
	if err != nil {
		return "", nil, fmt.Errorf("image: %v", err)
	}
	found, _ := keyring.Lookup(repo)
	out := []credential{}
	for _, c := range found {
		out = append(out, newCredential(c.Username, c.Password))
	}
	return repo, out, nil
}

func printLookup(keyring credentialprovider.DockerKeyring, image string) {
	repo, out, err := lookup(keyring, image)
	if err != nil {
		fail(1, "%v", err)
	}
	body, _ := json.Marshal(map[string]any{"image": repo, "credentials": out})
	fmt.Println(string(body))
}

type entry struct {
	Key string `json:"key"`
	credential
}

// readConfig is what the kubelet loads from a config.json holding content, through the same
// exported call its search order makes for each candidate path.
func readConfig(dir string, content []byte) (credentialprovider.DockerConfig, error) {
	path := filepath.Join(dir, "config.json")
	if err := os.WriteFile(path, content, 0o600); err != nil {
		fail(2, "%v", err)
	}
	return credentialprovider.ReadSpecificDockerConfigJSONFile(path)
}

func answer(dir string, line []byte) map[string]any {
	var request struct {
		Op      string `json:"op"`
		Content string `json:"content"`
		Image   string `json:"image"`
	}
	if err := json.Unmarshal(line, &request); err != nil {
		fail(2, "request: %v", err)
	}
	content, err := base64.StdEncoding.DecodeString(request.Content)
	if err != nil {
		fail(2, "request content: %v", err)
	}
	cfg, err := readConfig(dir, content)
	if err != nil {
		return map[string]any{"ok": false, "error": err.Error()}
	}
	switch request.Op {
	case "read":
		entries := []entry{}
		for key, e := range cfg {
			entries = append(entries, entry{Key: key, credential: newCredential(e.Username, e.Password)})
		}
		sort.Slice(entries, func(i, j int) bool { return entries[i].Key < entries[j].Key })
		return map[string]any{"ok": true, "entries": entries}
	case "lookup":
		keyring := &credentialprovider.BasicDockerKeyring{}
		keyring.Add(nil, cfg)
		repo, out, err := lookup(keyring, request.Image)
		if err != nil {
			return map[string]any{"ok": false, "error": err.Error()}
		}
		return map[string]any{"ok": true, "image": repo, "credentials": out}
	}
	fail(2, "unknown op %q", request.Op)
	return nil
}

func serve() {
	dir, err := os.MkdirTemp("", "kubelet-credentials-serve-")
	if err != nil {
		fail(2, "%v", err)
	}
	defer os.RemoveAll(dir)
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		if err := out.Encode(answer(dir, in.Bytes())); err != nil {
			fail(2, "%v", err)
		}
	}
}

// stubBinDir makes a bin dir with an executable stub for every provider name the config lists
// (a file, or every file of a directory), so check-provider-config judges the config alone.
func stubBinDir(config string) string {
	dir, err := os.MkdirTemp("", "kubelet-credentials-bin-")
	if err != nil {
		fail(2, "%v", err)
	}
	files := []string{config}
	if info, err := os.Stat(config); err == nil && info.IsDir() {
		entries, _ := os.ReadDir(config)
		files = nil
		for _, entry := range entries {
			files = append(files, filepath.Join(config, entry.Name()))
		}
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			continue // the kubelet's own loader reports what it cannot read
		}
		var loose struct {
			Providers []struct {
				Name string `json:"name"`
			} `json:"providers"`
		}
		_ = yaml.Unmarshal(data, &loose)
		for _, p := range loose.Providers {
			if p.Name == "" || strings.ContainsAny(p.Name, "/\x00") {
				continue
			}
			_ = os.WriteFile(filepath.Join(dir, p.Name), []byte("#!/bin/sh\nexit 1\n"), 0o755)
		}
	}
	return dir
}

func main() {
	if len(os.Args) < 2 {
		fail(2, "usage: kubelet-credentials lookup|provide|check-provider-config ...")
	}
	flags := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	rootDir := flags.String("root-dir", "", "the kubelet's --root-dir")
	config := flags.String("config", "", "a CredentialProviderConfig file")
	binDir := flags.String("bin-dir", "", "the kubelet's --image-credential-provider-bin-dir")
	serviceAccount := flags.String("service-account", "", "NAMESPACE/NAME of the pod's service account")
	token := flags.String("token", "", "the service account token the kubelet would pass")
	annotations := flags.String("annotations", "{}", "the service account's annotations (JSON)")
	_ = flags.Parse(os.Args[2:])
	args := flags.Args()

	switch os.Args[1] {
	case "lookup":
		if *rootDir == "" || len(args) != 1 {
			fail(2, "usage: lookup --root-dir DIR IMAGE")
		}
		isolate()
		credentialprovider.SetPreferredDockercfgPath(*rootDir)
		printLookup(credentialprovider.NewDefaultDockerKeyring(), args[0])
	case "check-provider-config":
		if len(args) != 1 {
			fail(2, "usage: check-provider-config [--bin-dir DIR] PATH")
		}
		bins := *binDir
		if bins == "" {
			bins = stubBinDir(args[0])
		}
		err := plugin.RegisterCredentialProviderPlugins(args[0], bins, nil, nil)
		if err != nil {
			fail(1, "%v", err)
		}
	case "provide":
		if *config == "" || *binDir == "" || len(args) != 1 {
			fail(2, "usage: provide --config FILE --bin-dir DIR [--service-account NS/NAME --token JWT] IMAGE")
		}
		namespace, name, _ := strings.Cut(*serviceAccount, "/")
		var saAnnotations map[string]string
		if err := json.Unmarshal([]byte(*annotations), &saAnnotations); err != nil {
			fail(2, "--annotations: %v", err)
		}
		getToken := func(ns, n string, tr *authenticationv1.TokenRequest) (*authenticationv1.TokenRequest, error) {
			if *token == "" {
				return nil, fmt.Errorf("no --token given")
			}
			tr.Status = authenticationv1.TokenRequestStatus{Token: *token}
			return tr, nil
		}
		getServiceAccount := func(ns, n string) (*v1.ServiceAccount, error) {
			return &v1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
				Namespace: ns, Name: n, UID: "11111111-2222-3333-4444-555555555555", Annotations: saAnnotations,
			}}, nil
		}
		isolate()
		if err := plugin.RegisterCredentialProviderPlugins(*config, *binDir, getToken, getServiceAccount); err != nil {
			fail(1, "%v", err)
		}
		keyring := plugin.NewExternalCredentialProviderDockerKeyring(namespace, "pod", "pod-uid", name)
		if args[0] != "-" {
			printLookup(keyring, args[0])
			return
		}
		in := bufio.NewScanner(os.Stdin)
		for in.Scan() {
			printLookup(keyring, in.Text())
		}
	case "serve":
		serve()
	default:
		fail(2, "unknown command %q", os.Args[1])
	}
}
