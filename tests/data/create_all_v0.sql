-- A database made by Transferlab's create_all before migrations existed (commit fcc3dce,
-- web/db.py), dumped with sqlite3's iterdump, with one project, its images, a finished job.
BEGIN TRANSACTION;
CREATE TABLE blobs (
	sha256 VARCHAR(64) NOT NULL, 
	size INTEGER NOT NULL, 
	content_type VARCHAR(40) NOT NULL, 
	width INTEGER NOT NULL, 
	height INTEGER NOT NULL, 
	created_at DATETIME NOT NULL, 
	touched_at DATETIME NOT NULL, 
	PRIMARY KEY (sha256)
);
INSERT INTO "blobs" VALUES('aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',10,'image/jpeg',4,3,'2026-11-01 12:00:00.000000','2026-11-01 12:00:00.000000');
INSERT INTO "blobs" VALUES('bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb',11,'image/png',5,6,'2026-11-01 12:00:00.000000','2026-11-01 12:00:00.000000');
CREATE TABLE iterations (
	id INTEGER NOT NULL, 
	project_id INTEGER NOT NULL, 
	number INTEGER NOT NULL, 
	job_id INTEGER, 
	folder VARCHAR(500) NOT NULL, 
	classes JSON NOT NULL, 
	backbones JSON NOT NULL, 
	n_train INTEGER NOT NULL, 
	n_test INTEGER NOT NULL, 
	features_computed INTEGER NOT NULL, 
	features_total INTEGER NOT NULL, 
	summary JSON NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_iteration_number UNIQUE (project_id, number), 
	FOREIGN KEY(project_id) REFERENCES projects (id) ON DELETE CASCADE
);
INSERT INTO "iterations" VALUES(1,1,1,1,'projects/1/iterations/1','["cat", "dog"]','["efficientnet_lite0"]',1,1,2,2,'{"ensemble": {"cv_accuracy": 0.5}}','2026-11-01 12:00:00.000000');
CREATE TABLE jobs (
	id INTEGER NOT NULL, 
	project_id INTEGER NOT NULL, 
	kind VARCHAR(20) NOT NULL, 
	state VARCHAR(12) NOT NULL, 
	active_project INTEGER, 
	progress FLOAT NOT NULL, 
	stage VARCHAR(200), 
	done INTEGER, 
	total INTEGER, 
	error TEXT, 
	cancel_requested BOOLEAN NOT NULL, 
	queue_id VARCHAR(64), 
	worker VARCHAR(200), 
	backbones JSON NOT NULL, 
	n_train INTEGER, 
	n_test INTEGER, 
	features_computed INTEGER, 
	features_total INTEGER, 
	iteration_id INTEGER, 
	created_at DATETIME NOT NULL, 
	started_at DATETIME, 
	finished_at DATETIME, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(project_id) REFERENCES projects (id) ON DELETE CASCADE, 
	UNIQUE (active_project), 
	FOREIGN KEY(iteration_id) REFERENCES iterations (id) ON DELETE SET NULL
);
INSERT INTO "jobs" VALUES(1,1,'train','succeeded',NULL,1.0,'done',NULL,NULL,NULL,0,NULL,'host:1','["efficientnet_lite0"]',NULL,NULL,NULL,NULL,1,'2026-11-01 12:00:00.000000',NULL,'2026-11-01 12:00:00.000000','2026-11-01 12:00:00.000000');
CREATE TABLE project_images (
	id INTEGER NOT NULL, 
	project_id INTEGER NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	label VARCHAR(100) NOT NULL, 
	split VARCHAR(8) NOT NULL, 
	name VARCHAR(1000) NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_project_image UNIQUE (project_id, sha256), 
	FOREIGN KEY(project_id) REFERENCES projects (id) ON DELETE CASCADE, 
	FOREIGN KEY(sha256) REFERENCES blobs (sha256)
);
INSERT INTO "project_images" VALUES(1,1,'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','cat','train','cats.zip:cat/1.jpg','2026-11-01 12:00:00.000000');
INSERT INTO "project_images" VALUES(2,1,'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb','dog','test','dog.png','2026-11-01 12:00:00.000000');
CREATE TABLE projects (
	id INTEGER NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	backbones JSON NOT NULL, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "projects" VALUES(1,'cats vs dogs','["efficientnet_lite0"]','2026-11-01 12:00:00.000000','2026-11-01 12:00:00.000000');
CREATE TABLE uploads (
	id INTEGER NOT NULL, 
	project_id INTEGER NOT NULL, 
	split VARCHAR(8) NOT NULL, 
	label VARCHAR(100), 
	accepted INTEGER NOT NULL, 
	files JSON NOT NULL, 
	rejected JSON NOT NULL, 
	duplicates JSON NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(project_id) REFERENCES projects (id) ON DELETE CASCADE
);
INSERT INTO "uploads" VALUES(1,1,'train',NULL,1,'[{"name": "cats.zip", "accepted": 1, "rejected": 0, "duplicates": 0}]','[]','[]','2026-11-01 12:00:00.000000');
CREATE TABLE worker_beats (
	id VARCHAR(200) NOT NULL, 
	started_at DATETIME NOT NULL, 
	seen_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "worker_beats" VALUES('host:1','2026-11-01 12:00:00.000000','2026-11-01 12:00:00.000000');
CREATE INDEX ix_blobs_touched_at ON blobs (touched_at);
CREATE INDEX ix_worker_beats_seen_at ON worker_beats (seen_at);
CREATE INDEX ix_project_images_split_label ON project_images (project_id, split, label);
CREATE INDEX ix_project_images_sha256 ON project_images (sha256);
CREATE INDEX ix_iterations_project_id ON iterations (project_id);
CREATE INDEX ix_uploads_project_id ON uploads (project_id);
CREATE INDEX ix_jobs_project_id ON jobs (project_id);
CREATE INDEX ix_jobs_state ON jobs (state);
COMMIT;
