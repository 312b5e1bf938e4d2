// Command sarama drives the Go client sarama against a broker, for Sluice's
// interop tests (tests/tests/interop.rs). It is built in GOPATH mode against
// Debian's packages (golang-go, golang-github-shopify-sarama-dev: sarama
// 1.22.1 as source under /usr/share/gocode), so no module proxy is involved.
//
// Subcommands, each bounded by --timeout seconds (then exit status 1):
//
//	produce --input FILE   send the records of FILE (JSON lines) with a
//	                       SyncProducer, acks=all; print each one back with
//	                       the partition and offset the broker gave it
//	consume --partition P --count N
//	                       read N records of one partition from the oldest
//	                       offset with a PartitionConsumer; print each
//	group --group G --count N
//	                       join G with a ConsumerGroup, read until N records
//	                       were seen, mark each one, commit on the way out and
//	                       leave; print each record
//
// Records go in and out as JSON lines, the same shape both ways:
//
//	{"partition":0,"offset":5,"timestamp_ms":1700000000000,
//	 "key":"6b31","value":"76","headers":[{"key":"68","value":null}]}
//
// Keys, values and header keys and values are hex, so that any bytes pass;
// null is a null key, value or header value. On input, partition and offset
// are ignored and timestamp_ms 0 lets sarama stamp the record.
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"sync"
	"time"

	"github.com/Shopify/sarama"
)

// Header is one record header, hex-encoded.
type Header struct {
	Key   string  `json:"key"`
	Value *string `json:"value"`
}

// Record is one record, hex-encoded.
type Record struct {
	Partition   int32    `json:"partition"`
	Offset      int64    `json:"offset"`
	TimestampMs int64    `json:"timestamp_ms"`
	Key         *string  `json:"key"`
	Value       *string  `json:"value"`
	Headers     []Header `json:"headers"`
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: sarama produce|consume|group --bootstrap HOST:PORT --topic T ...")
	}
	sarama.Logger = log.New(os.Stderr, "[sarama] ", log.LstdFlags|log.Lmicroseconds)
	flags := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	bootstrap := flags.String("bootstrap", "127.0.0.1:9092", "broker address")
	topic := flags.String("topic", "", "topic")
	timeoutSecs := flags.Int("timeout", 120, "give up after this many seconds")
	input := flags.String("input", "", "produce: JSON lines of the records to send")
	partition := flags.Int("partition", 0, "consume: the partition to read")
	count := flags.Int("count", 0, "consume, group: records to read")
	group := flags.String("group", "", "group: the consumer group to join")
	if err := flags.Parse(os.Args[2:]); err != nil {
		fail("%v", err)
	}
	if *topic == "" {
		fail("--topic is required")
	}
	time.AfterFunc(time.Duration(*timeoutSecs)*time.Second, func() {
		fail("%s did not finish within %d s", os.Args[1], *timeoutSecs)
	})

	brokers := []string{*bootstrap}
	switch os.Args[1] {
	case "produce":
		produce(brokers, *topic, *input)
	case "consume":
		consume(brokers, *topic, int32(*partition), *count)
	case "group":
		consumeGroup(brokers, *topic, *group, *count)
	default:
		fail("unknown subcommand %q (produce, consume or group)", os.Args[1])
	}
}

// newConfig is sarama's configuration for every subcommand.
func newConfig() *sarama.Config {
	config := sarama.NewConfig()
	config.ClientID = "sluice-interop-sarama"
	// sarama's default version (0.8.2) speaks Produce v0 and Fetch v0, which
	// Kafka 4 and Sluice no longer accept (their ranges start at Produce v3 and
	// Fetch v4). From 0.11 on, sarama 1.22 sends Produce v3 (record batches
	// with headers) and Fetch v4; from 1.0 on, Metadata v5. Nothing in 1.22
	// changes after 1.0, so this is no different from its newest, V2_2_0_0.
	config.Version = sarama.V2_1_0_0
	config.Producer.RequiredAcks = sarama.WaitForAll
	config.Producer.Return.Successes = true
	config.Consumer.Return.Errors = true
	config.Consumer.Offsets.Initial = sarama.OffsetOldest
	// With no retention set, sarama 1.22 commits with OffsetCommit v1, which
	// Kafka 4 removed (KIP-896) and Sluice does not accept either: both start
	// at v2. Any retention makes sarama send v2.
	config.Consumer.Offsets.Retention = 7 * 24 * time.Hour
	return config
}

func produce(brokers []string, topic, input string) {
	records := readRecords(input)
	messages := make([]*sarama.ProducerMessage, len(records))
	for i, record := range records {
		message := &sarama.ProducerMessage{Topic: topic}
		if key := unhex(record.Key); key != nil {
			message.Key = sarama.ByteEncoder(key)
		}
		if value := unhex(record.Value); value != nil {
			message.Value = sarama.ByteEncoder(value)
		}
		for _, header := range record.Headers {
			message.Headers = append(message.Headers, sarama.RecordHeader{
				Key:   unhex(&header.Key),
				Value: unhex(header.Value),
			})
		}
		if record.TimestampMs != 0 {
			message.Timestamp = time.Unix(0, record.TimestampMs*int64(time.Millisecond))
		}
		messages[i] = message
	}

	producer, err := sarama.NewSyncProducer(brokers, newConfig())
	check("create the producer", err)
	check("send the records", producer.SendMessages(messages))
	check("close the producer", producer.Close())
	for i, message := range messages {
		records[i].Partition = message.Partition
		records[i].Offset = message.Offset
		write(&records[i])
	}
}

func consume(brokers []string, topic string, partition int32, count int) {
	consumer, err := sarama.NewConsumer(brokers, newConfig())
	check("create the consumer", err)
	partitionConsumer, err := consumer.ConsumePartition(topic, partition, sarama.OffsetOldest)
	check(fmt.Sprintf("consume %s/%d", topic, partition), err)
	for read := 0; read < count; read++ {
		select {
		case message := <-partitionConsumer.Messages():
			write(recordOf(message))
		case consumerError := <-partitionConsumer.Errors():
			fail("consume %s/%d: %v", topic, partition, consumerError)
		}
	}
	check("close the partition consumer", partitionConsumer.Close())
	check("close the consumer", consumer.Close())
}

// groupHandler prints every record it is given and marks it consumed;
// once `count` records were seen it ends the session through `done`.
type groupHandler struct {
	lock  sync.Mutex
	seen  int
	count int
	done  context.CancelFunc
}

func (h *groupHandler) Setup(session sarama.ConsumerGroupSession) error {
	log.Printf("group: member %s, generation %d, claims %v",
		session.MemberID(), session.GenerationID(), session.Claims())
	return nil
}

func (h *groupHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }

func (h *groupHandler) ConsumeClaim(session sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for {
		select {
		case message, ok := <-claim.Messages():
			if !ok {
				return nil
			}
			h.lock.Lock()
			write(recordOf(message))
			session.MarkMessage(message, "")
			h.seen++
			if h.seen >= h.count {
				h.done()
			}
			h.lock.Unlock()
		case <-session.Context().Done():
			return nil
		}
	}
}

func consumeGroup(brokers []string, topic, group string, count int) {
	if group == "" {
		fail("--group is required")
	}
	consumerGroup, err := sarama.NewConsumerGroup(brokers, group, newConfig())
	check("create the consumer group", err)
	go func() {
		for groupError := range consumerGroup.Errors() {
			fail("group %s: %v", group, groupError)
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	handler := &groupHandler{count: count, done: cancel}
	// Consume returns at the end of each session (a rebalance, or `done`),
	// after the session's last commit of the marked offsets.
	for ctx.Err() == nil {
		check("consume as a group member", consumerGroup.Consume(ctx, []string{topic}, handler))
	}
	// Leaves the group.
	check("close the consumer group", consumerGroup.Close())
	log.Printf("group: %d records seen", handler.seen)
}

func recordOf(message *sarama.ConsumerMessage) *Record {
	record := &Record{
		Partition:   message.Partition,
		Offset:      message.Offset,
		TimestampMs: message.Timestamp.UnixNano() / int64(time.Millisecond),
		Key:         toHex(message.Key),
		Value:       toHex(message.Value),
		Headers:     []Header{},
	}
	for _, header := range message.Headers {
		record.Headers = append(record.Headers, Header{Key: hex.EncodeToString(header.Key), Value: toHex(header.Value)})
	}
	return record
}

func readRecords(path string) []Record {
	file, err := os.Open(path)
	check("open --input", err)
	defer file.Close()
	var records []Record
	decoder := json.NewDecoder(file)
	for decoder.More() {
		var record Record
		check(fmt.Sprintf("read record %d of %s", len(records), path), decoder.Decode(&record))
		records = append(records, record)
	}
	return records
}

// toHex keeps null apart from empty: nil becomes JSON null.
func toHex(bytes []byte) *string {
	if bytes == nil {
		return nil
	}
	text := hex.EncodeToString(bytes)
	return &text
}

// unhex keeps empty apart from null: "" becomes an empty, non-nil slice.
func unhex(text *string) []byte {
	if text == nil {
		return nil
	}
	bytes := make([]byte, hex.DecodedLen(len(*text)))
	_, err := hex.Decode(bytes, []byte(*text))
	check("decode hex", err)
	return bytes
}

var (
	outputLock sync.Mutex
	// One write per record, unbuffered: what was printed before a failure
	// is still there to read.
	output = json.NewEncoder(os.Stdout)
)

func write(record *Record) {
	outputLock.Lock()
	defer outputLock.Unlock()
	check("write a record", output.Encode(record))
}

func check(what string, err error) {
	if err != nil {
		fail("%s: %v", what, err)
	}
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "sarama: "+format+"\n", args...)
	os.Exit(1)
}
