// etcd for the tests' kube-apiserver: go.etcd.io/etcd/server/v3 (the release k8s 1.34 is built
// against), embedded, listening on the given client and peer URLs, data in DIR.
//
// Usage: etcd DIR CLIENT_URL PEER_URL
package main

import (
	"log"
	"net/url"
	"os"

	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	if len(os.Args) != 4 {
		log.Fatal("usage: etcd DIR CLIENT_URL PEER_URL")
	}
	cfg := embed.NewConfig()
	cfg.Dir = os.Args[1]
	client, err := url.Parse(os.Args[2])
	if err != nil {
		log.Fatal(err)
	}
	peer, err := url.Parse(os.Args[3])
	if err != nil {
		log.Fatal(err)
	}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.InitialCluster = cfg.Name + "=" + peer.String()
	cfg.LogLevel = "warn"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		log.Fatal(err)
	}
	<-e.Server.ReadyNotify()
	log.Print("etcd ready")
	log.Fatal(<-e.Err())
}
