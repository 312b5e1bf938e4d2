// Command sarama_failover drives one sarama client across the loss of a
// partition's leader, for Sluice's failover tests
// (tests/tests/cluster_failover.rs). It is built like ../sarama (GOPATH
// mode over Debian's sarama 1.22 source, no module proxy).
//
//	sarama_failover --bootstrap HOST:PORT --topic T --partition P --count N
//	                --continue-file PATH [--timeout SECONDS]
//
// With one client all along, it
//  1. prints the partition's leader, replicas and ISR as the client's
//     metadata has them;
//  2. sends N records ("before-00000", ...) to the partition with a
//     SyncProducer, acks=all, and prints where each was acknowledged;
//  3. prints {"ev":"waiting"} and waits until PATH exists (the test kills
//     the leader meanwhile, and creates PATH once another leads);
//  4. sends N more records ("after-00000", ...) the same way: the client
//     still names the old leader, so it has to find the new one;
//  5. prints the leader it sent them to, then the metadata refreshed;
//  6. reads the partition from its oldest offset with a consumer on the
//     same client until it has seen its 2N records, printing every record.
//
// Output is JSON lines on stdout:
//
//	{"ev":"metadata","phase":"before","leader":1,"replicas":[1,2,3],"isr":[1,2,3]}
//	{"ev":"ack","offset":0,"value":"before-00000"}
//	{"ev":"waiting"}
//	{"ev":"leader_used","leader":2}
//	{"ev":"rec","offset":0,"value":"before-00000"}
//
// Any error ends it with exit status 1 and a message on stderr, as does
// the --timeout.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"sync"
	"time"

	"github.com/Shopify/sarama"
)

// Event is one line of output; unset fields are left out.
type Event struct {
	Ev       string  `json:"ev"`
	Phase    string  `json:"phase,omitempty"`
	Leader   *int32  `json:"leader,omitempty"`
	Replicas []int32 `json:"replicas,omitempty"`
	Isr      []int32 `json:"isr,omitempty"`
	Offset   *int64  `json:"offset,omitempty"`
	Value    string  `json:"value,omitempty"`
}

func main() {
	sarama.Logger = log.New(os.Stderr, "[sarama] ", log.LstdFlags|log.Lmicroseconds)
	bootstrap := flag.String("bootstrap", "127.0.0.1:9092", "broker address")
	topic := flag.String("topic", "", "topic")
	partition := flag.Int("partition", 0, "the partition to write and read")
	count := flag.Int("count", 100, "records to send before and after the pause")
	continueFile := flag.String("continue-file", "", "go on once this file exists")
	timeoutSecs := flag.Int("timeout", 120, "give up after this many seconds")
	flag.Parse()
	if *topic == "" || *continueFile == "" {
		fail("--topic and --continue-file are required")
	}
	time.AfterFunc(time.Duration(*timeoutSecs)*time.Second, func() {
		fail("did not finish within %d s", *timeoutSecs)
	})
	p := int32(*partition)

	client, err := sarama.NewClient([]string{*bootstrap}, newConfig())
	check("create the client", err)
	check("refresh the metadata", client.RefreshMetadata(*topic))
	printMetadata(client, *topic, p, "before")

	producer, err := sarama.NewSyncProducerFromClient(client)
	check("create the producer", err)
	send(producer, *topic, p, "before", *count)
	write(Event{Ev: "waiting"})
	for {
		if _, err := os.Stat(*continueFile); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	send(producer, *topic, p, "after", *count)
	leader, err := client.Leader(*topic, p)
	check("the leader the client holds", err)
	used := leader.ID()
	write(Event{Ev: "leader_used", Leader: &used})
	check("refresh the metadata", client.RefreshMetadata(*topic))
	printMetadata(client, *topic, p, "after")

	readBack(client, *topic, p, 2**count)
	check("close the producer", producer.Close())
	check("close the client", client.Close())
}

// newConfig: the version as in ../sarama (Produce v3, Fetch v4, Metadata
// v5), acks=all, and retries that outlast a failover (a broker's session
// timeout plus an election).
func newConfig() *sarama.Config {
	config := sarama.NewConfig()
	config.ClientID = "sluice-failover-sarama"
	config.Version = sarama.V2_1_0_0
	config.Producer.RequiredAcks = sarama.WaitForAll
	config.Producer.Return.Successes = true
	config.Producer.Partitioner = sarama.NewManualPartitioner
	config.Producer.Retry.Max = 60
	config.Producer.Retry.Backoff = 500 * time.Millisecond
	config.Metadata.Retry.Max = 60
	config.Metadata.Retry.Backoff = 500 * time.Millisecond
	config.Net.DialTimeout = 3 * time.Second
	config.Consumer.Return.Errors = true
	config.Consumer.Retry.Backoff = 500 * time.Millisecond
	return config
}

func printMetadata(client sarama.Client, topic string, partition int32, phase string) {
	leader, err := client.Leader(topic, partition)
	check("the partition's leader", err)
	replicas, err := client.Replicas(topic, partition)
	check("the partition's replicas", err)
	isr, err := client.InSyncReplicas(topic, partition)
	check("the partition's ISR", err)
	id := leader.ID()
	write(Event{Ev: "metadata", Phase: phase, Leader: &id, Replicas: replicas, Isr: isr})
}

func send(producer sarama.SyncProducer, topic string, partition int32, prefix string, count int) {
	for i := 0; i < count; i++ {
		value := fmt.Sprintf("%s-%05d", prefix, i)
		message := &sarama.ProducerMessage{
			Topic:     topic,
			Partition: partition,
			Value:     sarama.StringEncoder(value),
		}
		_, offset, err := producer.SendMessage(message)
		check("send "+value, err)
		write(Event{Ev: "ack", Offset: &offset, Value: value})
	}
}

// readBack reads from the oldest offset until every record this program
// sent was seen, printing every record read.
func readBack(client sarama.Client, topic string, partition int32, sent int) {
	consumer, err := sarama.NewConsumerFromClient(client)
	check("create the consumer", err)
	partitionConsumer, err := consumer.ConsumePartition(topic, partition, sarama.OffsetOldest)
	check("consume the partition", err)
	seen := 0
	for seen < sent {
		select {
		case message := <-partitionConsumer.Messages():
			value := string(message.Value)
			offset := message.Offset
			write(Event{Ev: "rec", Offset: &offset, Value: value})
			if len(value) > 6 && (value[:6] == "before" || value[:5] == "after") {
				seen++
			}
		case consumerError := <-partitionConsumer.Errors():
			fail("consume %s/%d: %v", topic, partition, consumerError)
		}
	}
	check("close the partition consumer", partitionConsumer.Close())
	check("close the consumer", consumer.Close())
}

var outputLock sync.Mutex

func write(event Event) {
	outputLock.Lock()
	defer outputLock.Unlock()
	line, err := json.Marshal(event)
	check("encode an event", err)
	_, err = os.Stdout.Write(append(line, '\n'))
	check("write an event", err)
}

func check(what string, err error) {
	if err != nil {
		fail("%s: %v", what, err)
	}
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "sarama_failover: "+format+"\n", args...)
	os.Exit(1)
}
