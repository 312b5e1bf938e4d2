#!/usr/bin/env node
// Round trip through a Kafka broker with KafkaJS.
//
// Creates a 3-partition topic with the admin API, produces keyed records with
// headers and explicit timestamps (in batches of 500, KafkaJS's default
// partitioner), then reads every partition from the beginning and checks
// count, offsets, keys, values, headers, timestamps and key placement.
//
// KafkaJS has no manual-assignment consumer (its consumer always joins a
// group), so the read-back drives KafkaJS's own Fetch request and record
// decoder through its cluster object, as its group consumer does on each
// fetch, without a group. That uses internals of the pinned KafkaJS version
// (package.json).
//
// Prints one "kafkajs_roundtrip: OK ..." line on success; exits 1 with the
// mismatches otherwise.
'use strict'

const { Kafka, logLevel, Partitioners } = require('kafkajs')
const kafkajsVersion = require('kafkajs/package.json').version
const ISOLATION_LEVEL = require('kafkajs/src/protocol/isolationLevel')

const NAME = 'kafkajs_roundtrip'
const PARTITIONS = 3
const DISTINCT_KEYS = 211
const NULL_VALUE_EVERY = 1000
const PRODUCE_CHUNK = 500
const MAX_REPORTED_ERRORS = 25

function fail(message) {
  process.stderr.write(`${NAME}: FAIL: ${message}\n`)
  process.exit(1)
}

function parseArgs(argv) {
  const usage =
    `usage: ${NAME}.js --bootstrap HOST:PORT --topic NAME [--records N] [--timeout SECONDS]`
  const args = { records: 10000, timeout: 240 }
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]
    if (flag === '--help' || flag === '-h') {
      process.stdout.write(`${usage}\n`)
      process.exit(0)
    }
    const value = argv[i + 1]
    if (value === undefined) fail(`${flag} needs a value\n${usage}`)
    i++
    switch (flag) {
      case '--bootstrap': args.bootstrap = value; break
      case '--topic': args.topic = value; break
      case '--records': args.records = Number(value); break
      case '--timeout': args.timeout = Number(value); break
      default: fail(`unknown argument ${flag}\n${usage}`)
    }
  }
  if (!args.bootstrap || !args.topic) fail(`--bootstrap and --topic are required\n${usage}`)
  if (!Number.isInteger(args.records) || args.records <= 0) fail('--records must be a positive integer')
  if (!(args.timeout > 0)) fail('--timeout must be positive')
  return args
}

// The records, as in roundtrip_common.py: arbitrary-byte values of varying
// length (every NULL_VALUE_EVERY-th null), varied headers including an empty
// value and a repeated key, and non-monotonic timestamps in the last hour.
function makeRecords(count) {
  const base = Date.now() - 3600000
  const records = []
  for (let i = 0; i < count; i++) {
    const key = Buffer.from(`key-${String(i % DISTINCT_KEYS).padStart(3, '0')}`)
    let value = null
    if (i % NULL_VALUE_EVERY !== NULL_VALUE_EVERY - 1) {
      const tail = Buffer.alloc(i % 97)
      for (let j = 0; j < tail.length; j++) tail[j] = (i * 31 + j * 7) % 256
      value = Buffer.concat([Buffer.from(`value-${String(i).padStart(5, '0')}|`), tail])
    }
    // Header lists in wire order; a repeated key is sent as an array value.
    let headers
    switch (i % 4) {
      case 0: headers = {}; break
      case 1: headers = { idx: Buffer.from(String(i)) }; break
      case 2:
        headers = {
          idx: Buffer.from(String(i)),
          bin: Buffer.from([i % 256, (i >> 8) % 256, 0, 255]),
          empty: Buffer.alloc(0),
        }
        break
      default:
        headers = {
          dup: [Buffer.from('first'), Buffer.from(`second-${i % 7}`)],
          idx: Buffer.from(String(i)),
        }
    }
    const timestamp = String(base + ((i * 7919) % count) * 3)
    records.push({ index: i, key, value, headers, timestamp })
  }
  return records
}

// Headers as [key, hex value] pairs in wire order, for comparison.
function headerPairs(headers) {
  const pairs = []
  for (const [key, value] of Object.entries(headers || {})) {
    for (const v of Array.isArray(value) ? value : [value]) {
      pairs.push([key, v === null ? null : Buffer.from(v).toString('hex')])
    }
  }
  return JSON.stringify(pairs)
}

function bufferText(buffer) {
  if (buffer === null || buffer === undefined) return 'null'
  const hex = buffer.subarray(0, 40).toString('hex')
  return buffer.length > 40 ? `${hex}... (${buffer.length} bytes)` : hex
}

function sameBytes(a, b) {
  if (a === null || a === undefined || b === null || b === undefined) {
    return (a === null || a === undefined) && (b === null || b === undefined)
  }
  return Buffer.compare(a, b) === 0
}

function withDeadline(promise, deadline, what) {
  const left = deadline - Date.now()
  if (left <= 0) fail(`overall deadline passed before ${what}`)
  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish in time`)), left)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

async function main() {
  const args = parseArgs(process.argv.slice(2))
  const deadline = Date.now() + args.timeout * 1000
  const watchdog = setTimeout(
    () => fail(`overall deadline of ${args.timeout} s passed`),
    args.timeout * 1000 + 5000
  )
  watchdog.unref()

  const kafka = new Kafka({
    clientId: NAME,
    brokers: [args.bootstrap],
    connectionTimeout: 10000,
    requestTimeout: 30000,
    retry: { retries: 5 },
    logLevel: logLevel.WARN,
  })
  const records = makeRecords(args.records)

  // Create the topic.
  const admin = kafka.admin()
  await withDeadline(admin.connect(), deadline, 'admin connect')
  try {
    const created = await withDeadline(
      admin.createTopics({
        topics: [{ topic: args.topic, numPartitions: PARTITIONS, replicationFactor: 1 }],
        waitForLeaders: true,
        timeout: 30000,
      }),
      deadline,
      'CreateTopics'
    )
    if (!created) fail(`CreateTopics reported that ${args.topic} already exists`)
  } catch (err) {
    fail(`CreateTopics(${args.topic}, ${PARTITIONS} partitions) failed: ${err.stack || err}`)
  }
  const { topics } = await withDeadline(
    admin.fetchTopicMetadata({ topics: [args.topic] }),
    deadline,
    'Metadata'
  )
  const partitionMetadata = topics[0].partitions
  if (partitionMetadata.length !== PARTITIONS) {
    fail(`${args.topic} has ${partitionMetadata.length} partitions, asked for ${PARTITIONS}`)
  }

  // Produce in chunks. Each chunk is one request with one batch per
  // partition, so a record's offset is its partition's base offset in the
  // response plus its position among the chunk's records for that partition.
  const partitioner = Partitioners.DefaultPartitioner()
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner })
  await withDeadline(producer.connect(), deadline, 'producer connect')
  const acks = new Map() // index -> [partition, offset]
  for (let start = 0; start < records.length; start += PRODUCE_CHUNK) {
    const chunk = records.slice(start, start + PRODUCE_CHUNK)
    const messages = chunk.map(r => ({
      key: r.key,
      value: r.value,
      headers: r.headers,
      timestamp: r.timestamp,
    }))
    let results
    try {
      results = await withDeadline(
        producer.send({ topic: args.topic, acks: -1, timeout: 30000, messages }),
        deadline,
        'Produce'
      )
    } catch (err) {
      fail(`producing records ${start}..${start + chunk.length - 1} failed: ${err.stack || err}`)
    }
    const baseOffsets = new Map()
    for (const result of results) {
      if (result.errorCode !== 0) fail(`Produce answered error ${result.errorCode} for partition ${result.partition}`)
      baseOffsets.set(result.partition, BigInt(result.baseOffset))
    }
    const next = new Map()
    for (const [i, message] of messages.entries()) {
      const partition = partitioner({ topic: args.topic, partitionMetadata, message })
      if (!baseOffsets.has(partition)) fail(`no Produce result for partition ${partition} of record ${chunk[i].index}`)
      const position = next.get(partition) || 0n
      next.set(partition, position + 1n)
      acks.set(chunk[i].index, [partition, baseOffsets.get(partition) + position])
    }
  }
  await producer.disconnect()

  // Offsets as the admin API reports them.
  const offsets = await withDeadline(admin.fetchTopicOffsets(args.topic), deadline, 'ListOffsets')
  const startOffsets = new Map()
  const endOffsets = new Map()
  for (const o of offsets) {
    startOffsets.set(o.partition, BigInt(o.low))
    endOffsets.set(o.partition, BigInt(o.high))
  }
  await admin.disconnect()

  // Read back every partition from offset 0 with KafkaJS's Fetch, no group.
  const createClusterSymbol = Object.getOwnPropertySymbols(kafka).find(
    s => s.description === 'private:Kafka:createCluster'
  )
  if (!createClusterSymbol) fail(`KafkaJS ${kafkajsVersion} has no cluster factory; update this script`)
  const cluster = kafka[createClusterSymbol]({ allowAutoTopicCreation: false })
  await withDeadline(cluster.connect(), deadline, 'cluster connect')
  await withDeadline(cluster.addTargetTopic(args.topic), deadline, 'Metadata')
  const received = new Map()
  const nextOffset = new Map()
  for (let p = 0; p < PARTITIONS; p++) {
    received.set(p, [])
    nextOffset.set(p, 0n)
  }
  const done = () => [...nextOffset].every(([p, next]) => next >= (endOffsets.get(p) ?? 0n))
  while (!done()) {
    if (Date.now() >= deadline) {
      const counts = [...received].map(([p, r]) => `${p}: ${r.length}`).join(', ')
      fail(`read only {${counts}} of end offsets before the deadline`)
    }
    const pending = [...nextOffset]
      .filter(([p, next]) => next < (endOffsets.get(p) ?? 0n))
      .map(([p]) => p)
    const byLeader = cluster.findLeaderForPartitions(args.topic, pending)
    for (const [nodeId, partitions] of Object.entries(byLeader)) {
      const broker = await withDeadline(cluster.findBroker({ nodeId }), deadline, 'broker lookup')
      let response
      try {
        response = await withDeadline(
          broker.fetch({
            isolationLevel: ISOLATION_LEVEL.READ_COMMITTED,
            maxWaitTime: 200,
            minBytes: 1,
            maxBytes: 1048576,
            topics: [{
              topic: args.topic,
              partitions: partitions.map(p => ({
                partition: p,
                fetchOffset: nextOffset.get(p).toString(),
                maxBytes: 262144,
              })),
            }],
          }),
          deadline,
          'Fetch'
        )
      } catch (err) {
        fail(`Fetch of partitions ${partitions} failed: ${err.stack || err}`)
      }
      for (const { topicName, partitions: answers } of response.responses) {
        if (topicName !== args.topic) fail(`Fetch answered for topic ${topicName}`)
        for (const answer of answers) {
          const p = answer.partition
          for (const message of answer.messages) {
            const offset = BigInt(message.offset)
            // A batch may start before the fetch offset; skip what was read.
            if (offset < nextOffset.get(p)) continue
            if (message.isControlRecord) fail(`partition ${p} offset ${offset}: unexpected control record`)
            received.get(p).push({ partition: p, offset, message })
            nextOffset.set(p, offset + 1n)
          }
        }
      }
    }
  }
  await cluster.disconnect()

  // Checks.
  const errors = []
  const error = message => errors.push(message)
  const at = new Map() // "p:o" -> index
  for (const r of records) {
    const ack = acks.get(r.index)
    if (!ack) { error(`record ${r.index} was never acknowledged`); continue }
    const where = `${ack[0]}:${ack[1]}`
    if (at.has(where)) error(`records ${at.get(where)} and ${r.index} were both acknowledged at partition ${ack[0]} offset ${ack[1]}`)
    at.set(where, r.index)
  }
  const counts = []
  for (let p = 0; p < PARTITIONS; p++) {
    const acked = BigInt([...acks.values()].filter(([partition]) => partition === p).length)
    counts.push(Number(acked))
    if (startOffsets.get(p) !== 0n) error(`partition ${p}: log start offset ${startOffsets.get(p)}, expected 0`)
    if (endOffsets.get(p) !== acked) error(`partition ${p}: end offset (high watermark) ${endOffsets.get(p)}, expected ${acked} (records acknowledged there)`)
  }
  let consumed = 0
  const keyPartition = new Map()
  for (let p = 0; p < PARTITIONS; p++) {
    const got = received.get(p)
    consumed += got.length
    if (got.length !== counts[p]) error(`partition ${p}: read ${got.length} records, ${counts[p]} were acknowledged`)
    for (const [position, { offset, message }] of got.entries()) {
      const where = `partition ${p} offset ${offset}`
      if (offset !== BigInt(position)) {
        error(`partition ${p}: record #${position} read has offset ${offset} (offsets must be dense from 0 and in order)`)
        break
      }
      const index = at.get(`${p}:${offset}`)
      if (index === undefined) { error(`${where}: no record was acknowledged there`); continue }
      const sent = records[index]
      if (!sameBytes(message.key, sent.key)) error(`${where} (record ${index}): key ${bufferText(message.key)}, sent ${bufferText(sent.key)}`)
      if (!sameBytes(message.value, sent.value)) error(`${where} (record ${index}): value ${bufferText(message.value)}, sent ${bufferText(sent.value)}`)
      const gotHeaders = headerPairs(message.headers)
      const sentHeaders = headerPairs(sent.headers)
      if (gotHeaders !== sentHeaders) error(`${where} (record ${index}): headers ${gotHeaders}, sent ${sentHeaders}`)
      if (message.timestamp !== sent.timestamp) error(`${where} (record ${index}): timestamp ${message.timestamp}, sent ${sent.timestamp}`)
      if (message.batchContext?.timestampType !== 0) error(`${where} (record ${index}): timestamp type is not CreateTime`)
      if (message.key) {
        const key = message.key.toString('hex')
        if (!keyPartition.has(key)) keyPartition.set(key, p)
        else if (keyPartition.get(key) !== p) error(`key ${message.key} is in partitions ${keyPartition.get(key)} and ${p}`)
      }
    }
  }
  if (consumed !== records.length) error(`read ${consumed} records in all, produced ${records.length}`)
  if (errors.length) {
    const shown = errors.slice(0, MAX_REPORTED_ERRORS)
    const more = errors.length - shown.length
    fail(`${errors.length} mismatches:\n  ${shown.join('\n  ')}${more ? `\n  ... and ${more} more` : ''}`)
  }
  clearTimeout(watchdog)
  process.stdout.write(
    `${NAME}: OK ${records.length} records over ${PARTITIONS} partitions [${counts.join(', ')}] (kafkajs ${kafkajsVersion})\n`
  )
}

main().catch(err => fail(err.stack || String(err)))
